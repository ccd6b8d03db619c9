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
import json
import pathlib
import re
from typing import Any

from ._reading import Problem, check_mode, field, jsonl_records, report
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
        out[str(movie)] = {k: int(v) for k, v in labels.items() if k in ("suggested", "seen", "liked")}
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
    out = DialogueSet(stats=stats)
    items: set[str] = set()
    for where, obj in jsonl_records(path, stats, on_error):
        try:
            dialogue = _parse(obj, stats)
        except Problem as exc:
            report(stats, where, str(exc), on_error)
            continue
        out.append(dialogue)
        stats.turns += len(dialogue.turns)
        for turn in dialogue.turns:
            items.update(turn.items)
    stats.dialogues = len(out)
    stats.items = len(items)
    return out


def load_redial_catalog(movies_csv: str | pathlib.Path, movie_info_json: str | pathlib.Path | None = None) -> Catalog:
    """The ReDial movies (``movieId,movieName,nbMentions``) with genre/director/star/writer/plot/year
    attributes from ``movie_info.json`` where it has the movie."""
    info: dict[str, Any] = {}
    if movie_info_json is not None:
        with open(movie_info_json, encoding="utf-8") as f:
            info = json.load(f)
    items = []
    with open(movies_csv, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        missing = {"movieId", "movieName"} - set(reader.fieldnames or [])
        if missing:
            raise DataError(f"{movies_csv}:1: missing columns {sorted(missing)}")
        for row_no, row in enumerate(reader, 2):
            if not row["movieId"] or row["movieName"] is None:
                raise DataError(f"{movies_csv}:{row_no}: empty movieId or movieName")
            title = clean_title(row["movieName"])
            meta = info.get(row["movieId"], {})
            attrs = {k: [str(x) for x in meta.get(k, [])] for k in ("genre", "director", "star", "writer")}
            year = _YEAR.search(title)
            attrs["year"] = [year.group(1)] if year else []
            if meta.get("plot"):
                attrs["plot"] = [str(meta["plot"])]
            items.append(Item(row["movieId"], title, attrs))
    return Catalog(items, source=str(movies_csv))


def most_mentioned(movies_csv: str | pathlib.Path, n: int) -> list[str]:
    """Ids of the ``n`` movies mentioned most often in ReDial (``nbMentions``; ties by id)."""
    with open(movies_csv, encoding="utf-8", newline="") as f:
        rows = [(r["movieId"], int(r.get("nbMentions") or 0)) for r in csv.DictReader(f)]
    return [i for i, _ in sorted(rows, key=lambda r: (-r[1], r[0]))[:n]]
