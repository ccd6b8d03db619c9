"""ReDial (Li et al., 2018) in its raw JSONL format, including the iEvaLM redistribution
(``train_extra.jsonl``: no ``timeOffset``/``messageId``, extra per-message annotations).

Seeker (initiator) = user, recommender (respondent) = system. Consecutive messages of one speaker
become one turn (time of the first message; ``meta["end_time"]`` the last, ``meta["messages"]``
their count). ``@id`` mentions present in ``movieMentions`` become items; others stay as text and
are counted as unresolved. HTML entities are unescaped; titles have their spaces collapsed;
``[]`` stands for ``{}`` in the question fields.
"""

import csv
import html
import io
import pathlib
import re
from typing import Any

from ._reading import (
    Problem,
    check_mode,
    collect,
    field,
    integer,
    jsonl_records,
    read_json,
    read_text,
    str_list,
)
from .schema import Catalog, DataError, Dialogue, DialogueSet, Item, LoadStats, Turn

_MENTION = re.compile(r"@(\d+)")
_YEAR = re.compile(r"\((\d{4})\)\s*$")


def clean_title(title: str) -> str:
    """ReDial titles carry double spaces; collapse them."""
    return " ".join(title.split())


def _questions(obj: dict[str, Any], name: str) -> dict[str, dict[str, int]]:
    value = field(obj, name, (dict, list))
    if isinstance(value, list):
        if value:
            raise Problem(f"field {name!r} must be an object (or [] for empty), got a non-empty list")
        return {}
    out = {}
    for movie, labels in value.items():
        if not isinstance(labels, dict):
            raise Problem(f"field {name!r}[{movie!r}] must be an object of suggested/seen/liked")
        out[str(movie)] = {
            k: integer(v, f"field {name!r}[{movie!r}][{k!r}]")
            for k, v in labels.items()
            if k in ("suggested", "seen", "liked")
        }
    return out


def _parse(obj: dict[str, Any], stats: LoadStats) -> Dialogue:
    conv = field(obj, "conversationId", (str, int))
    seeker = field(obj, "initiatorWorkerId", int)
    recommender = field(obj, "respondentWorkerId", int)
    mentions_raw = field(obj, "movieMentions", (dict, list))
    if isinstance(mentions_raw, list) and mentions_raw:
        raise Problem("field 'movieMentions' must be an object (or [] for empty)")
    mentions = {str(k): clean_title(str(v)) for k, v in (mentions_raw or {}).items() if v is not None}
    messages = field(obj, "messages", list)
    turns: list[Turn] = []
    unresolved = n_mentions = 0
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict):
            raise Problem(f"messages[{i}] must be an object")
        text = html.unescape(field(msg, "text", str))
        sender = field(msg, "senderWorkerId", int)
        t = field(msg, "timeOffset", (int, float), optional=True)
        if sender == seeker:
            role = "user"
        elif sender == recommender:
            role = "system"
        else:
            raise Problem(f"messages[{i}]: sender {sender} is neither the initiator nor the respondent")
        items = []
        for movie in _MENTION.findall(text):
            n_mentions += 1
            if movie in mentions:
                items.append(movie)
            else:
                unresolved += 1
        if turns and turns[-1].role == role:
            turn = turns[-1]
            turn.text = f"{turn.text}\n{text}"
            turn.items.extend(m for m in items if m not in turn.items)
            turn.meta["messages"] += 1
            if t is not None:
                turn.meta["end_time"] = float(t)
        else:
            turns.append(
                Turn(
                    role,
                    text,
                    list(dict.fromkeys(items)),
                    None if t is None else float(t),
                    {"messages": 1, "end_time": None if t is None else float(t)},
                )
            )
    stats.messages += len(messages)
    stats.mentions += n_mentions
    stats.unresolved_mentions += unresolved
    ratings = {
        "initiator": _questions(obj, "initiatorQuestions"),
        "respondent": _questions(obj, "respondentQuestions"),
        "titles": mentions,
    }
    return Dialogue(str(conv), turns, ratings, source="redial")


def load_redial(path: str | pathlib.Path, *, on_error: str = "raise") -> DialogueSet:
    """Dialogues of a raw ReDial JSONL file; ``.stats`` says what was read, resolved and skipped.
    ``on_error="raise"`` raises :class:`DataError` naming file and line; "skip" records the reason."""
    check_mode(on_error)
    path = pathlib.Path(path)
    stats = LoadStats(file=str(path))
    records = jsonl_records(path, stats, on_error)
    return collect(records, lambda where, obj: _parse(obj, stats), stats, on_error, "conversationId")


def load_redial_catalog(movies_csv: str | pathlib.Path, movie_info_json: str | pathlib.Path | None = None) -> Catalog:
    """The ReDial movies (``movieId,movieName,nbMentions``) with genre/director/star/writer/plot/year
    attributes from ``movie_info.json`` where it has the movie. A malformed file (not UTF-8, not
    JSON, a duplicate ``movieId``, an attribute that is not a list of strings) raises
    :class:`DataError` naming the file and the row or movie."""
    info: dict[str, Any] = {}
    if movie_info_json is not None:
        info = read_json(movie_info_json, dict, "an object of movie id -> attributes")
    items = []
    first_row: dict[str, int] = {}
    for row_no, row in _csv_rows(movies_csv, ("movieId", "movieName")):
        if not row["movieId"] or row["movieName"] is None:
            raise DataError(f"{movies_csv}:{row_no}: empty movieId or movieName")
        if row["movieId"] in first_row:
            first = first_row[row["movieId"]]
            raise DataError(f"{movies_csv}:{row_no}: duplicate movieId {row['movieId']!r} (first at row {first})")
        first_row[row["movieId"]] = row_no
        title = clean_title(row["movieName"])
        meta = info.get(row["movieId"], {})
        try:
            if not isinstance(meta, dict):
                raise Problem(f"must be an object, got {type(meta).__name__}")
            attrs = {k: str_list(meta.get(k, []), repr(k)) for k in ("genre", "director", "star", "writer")}
            if meta.get("plot") is not None and not isinstance(meta["plot"], str):
                raise Problem(f"'plot' must be a string, got {type(meta['plot']).__name__}")
        except Problem as exc:
            raise DataError(f"{movie_info_json}: movie {row['movieId']!r}: {exc}") from None
        year = _YEAR.search(title)
        attrs["year"] = [year.group(1)] if year else []
        if meta.get("plot"):
            attrs["plot"] = [meta["plot"]]
        items.append(Item(row["movieId"], title, attrs))
    return Catalog(items, source=str(movies_csv))


def _csv_rows(path: str | pathlib.Path, required: tuple[str, ...]):
    """(row number, row) of a UTF-8 CSV file (a BOM is dropped) that has the ``required`` columns."""
    reader = csv.DictReader(io.StringIO(read_text(path), newline=""))
    missing = set(required) - set(reader.fieldnames or [])
    if missing:
        raise DataError(f"{path}:1: missing columns {sorted(missing)} (found {reader.fieldnames})")
    return enumerate(reader, 2)


def most_mentioned(movies_csv: str | pathlib.Path, n: int) -> list[str]:
    """Ids of the ``n`` movies mentioned most often in ReDial (``nbMentions``; ties by id)."""
    rows = []
    for row_no, r in _csv_rows(movies_csv, ("movieId",)):
        try:
            rows.append((r["movieId"], int(r.get("nbMentions") or 0)))
        except ValueError:
            got = r.get("nbMentions")
            raise DataError(f"{movies_csv}:{row_no}: nbMentions must be an integer, got {got!r}") from None
    return [i for i, _ in sorted(rows, key=lambda r: (-r[1], r[0]))[:n]]
