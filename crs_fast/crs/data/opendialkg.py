"""OpenDialKG (Moon et al., 2019): the processed recommendation turns (iEvaLM's
``train/valid/test.jsonl``: one record per recommendation turn) and the original session rows
(``raw_examples.json`` or the full ``opendialkg.csv``: ``Messages`` JSON, ratings as JSON strings).

Titles are linked to catalog ids by normalised title: exact matches of word n-grams in message
text, and for ``rec`` lists an exact match or else the best fuzzy match (rapidfuzz, score >= 90).
Knowledge-graph walks (``kgwalk/choose_path`` actions) are kept in the next chat turn's
``meta["kg_paths"]``; ``meta_thread`` actions are skipped and counted.
"""

import csv
import io
import pathlib
import re
import unicodedata
from typing import Any

from ._reading import (
    Problem,
    check_mode,
    collect,
    field,
    jsonl_records,
    parse_json,
    read_json,
    read_text,
    str_list,
)
from .schema import Catalog, DataError, Dialogue, DialogueSet, Item, LoadStats, Turn, normalize_title

FUZZY_CUTOFF = 90.0
_MAX_NGRAM = 8


class TitleLinker:
    """Links titles and free text to catalog ids by normalised title (exact, then fuzzy)."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        self.titles = catalog.titles()
        self._choices = list(self.titles)

    def link_title(self, title: str) -> str | None:
        """Exact normalised match, else the best fuzzy match scoring >= FUZZY_CUTOFF."""
        key = normalize_title(title)
        if key in self.titles:
            return self.titles[key]
        from rapidfuzz import fuzz, process

        best = process.extractOne(key, self._choices, scorer=fuzz.ratio, score_cutoff=FUZZY_CUTOFF)
        return None if best is None else self.titles[best[0]]

    def link_text(self, text: str) -> list[str]:
        """Ids of catalog titles occurring in ``text`` (longest word n-grams first, no overlaps).
        A one-word title must be capitalised in the text and longer than 3 letters ("Up", "love")."""
        raw = re.findall(r"[A-Za-z0-9]+", unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode())
        words = [w.lower() for w in raw]
        found, i = [], 0
        while i < len(words):
            for n in range(min(_MAX_NGRAM, len(words) - i), 0, -1):
                item = self.titles.get(" ".join(words[i : i + n]))
                if item is not None and (n > 1 or (len(words[i]) > 3 and raw[i][0].isupper())):
                    found.append(item)
                    i += n
                    break
            else:
                i += 1
        return list(dict.fromkeys(found))


def load_opendialkg_catalog(item_info: str | pathlib.Path, item_ids: str | pathlib.Path | None = None) -> Catalog:
    """Items of ``item_info.json`` (restricted to ``item_ids.json`` when given) with actor,
    director, genre, language, writer and year attributes."""
    info = read_json(item_info, dict, "an object of item id -> attributes")
    keep = None
    if item_ids is not None:
        keep = {str(i) for i in read_json(item_ids, list, "a list of item ids")}
    items = []
    for key, meta in info.items():
        if keep is not None and str(key) not in keep:
            continue
        if not isinstance(meta, dict) or not isinstance(meta.get("name"), str):
            raise DataError(f"{item_info}: item {key!r} has no name")
        try:
            attrs = {
                k: list(dict.fromkeys(str_list(meta.get(k, []), repr(k))))
                for k in ("actor", "director", "genre", "language", "writer")
            }
        except Problem as exc:
            raise DataError(f"{item_info}: item {key!r}: {exc}") from None
        attrs["year"] = [str(meta["year"])] if meta.get("year") else []
        items.append(Item(str(key), meta["name"], attrs))
    return Catalog(items, source=str(item_info))


def _turn_record(obj: dict[str, Any], linker: TitleLinker | None, stats: LoadStats) -> Dialogue:
    dialog_id, turn_id = field(obj, "dialog_id", (int, str)), field(obj, "turn_id", (int, str))
    context = field(obj, "context", list)
    rec = field(obj, "rec", list)
    resp = field(obj, "resp", str)
    entity = field(obj, "entity", list, optional=True) or []
    if not all(isinstance(c, str) for c in context) or not all(isinstance(r, str) for r in rec):
        raise Problem("fields 'context' and 'rec' must be lists of strings")
    turns = []
    for k, text in enumerate(context):  # the last context message is the user's
        role = "user" if (len(context) - 1 - k) % 2 == 0 else "system"
        turns.append(Turn(role, text, linker.link_text(text) if linker else []))
    targets = []
    for title in rec:
        item = linker.link_title(title) if linker else None
        if item is None:
            stats.unlinked_titles += 1
        else:
            stats.linked_titles += 1
            targets.append(item)
    turns.append(Turn("system", resp, list(dict.fromkeys(targets)), meta={"rec_titles": list(rec), "entity": entity}))
    stats.messages += len(context) + 1
    return Dialogue(f"{dialog_id}:{turn_id}", turns, {}, source="opendialkg")


def _rating(value: Any, name: str, stats: LoadStats, where: str) -> dict[str, int]:
    """The integer ratings of a JSON object; non-integer values are dropped, counted in
    ``stats.dropped_ratings`` and listed in ``stats.notes``."""
    if isinstance(value, str):
        try:
            value = parse_json(value)
        except Problem as exc:
            raise Problem(f"{name}: {exc}") from None
    if not isinstance(value, dict):
        raise Problem(f"{name} must be a JSON object")
    out = {}
    for k, v in value.items():
        if str(v).strip().lstrip("-").isdigit():
            out[k] = int(v)
        else:
            stats.dropped_ratings += 1
            stats.notes.append(f"{where}: {name} {k!r} = {v!r} is not an integer rating; dropped")
    return out


def _session(row: dict[str, Any], index: int, linker: TitleLinker | None, stats: LoadStats, where: str) -> Dialogue:
    if not isinstance(row, dict):
        raise Problem(f"a session row must be an object, got {type(row).__name__}")
    raw = row.get("Messages")
    if raw is None:
        raise Problem("missing field 'Messages'")
    try:
        messages = parse_json(raw) if isinstance(raw, str) else raw
    except Problem as exc:
        raise Problem(f"'Messages' is not valid JSON: {exc}") from None
    if not isinstance(messages, list):
        raise Problem("'Messages' must be a list")
    turns: list[Turn] = []
    pending: dict[str, list[Any]] = {}
    for k, msg in enumerate(messages):
        if not isinstance(msg, dict) or "type" not in msg:
            raise Problem(f"Messages[{k}] must be an object with a 'type'")
        sender = msg.get("sender")
        role = "user" if sender == "user" else "system"
        if msg["type"] == "action":
            if msg.get("action_id") == "kgwalk/choose_path":
                meta = msg.get("metadata", {})
                if not isinstance(meta, dict):
                    raise Problem(f"Messages[{k}]['metadata'] must be an object, got {type(meta).__name__}")
                pending.setdefault(role, []).append(meta.get("path"))
            else:  # meta_thread/send_meta_message and other actions carry no dialogue content
                stats.skipped_actions += 1
            continue
        text = field(msg, "message", str)
        items = linker.link_text(text) if linker else []
        paths = pending.pop(role, [])
        for path in paths:  # KG-walk entities that are catalog items count as mentions
            triples = path[1] if isinstance(path, list) and len(path) > 1 and isinstance(path[1], list) else []
            for triple in triples:
                for entity in (triple[0], triple[2]) if isinstance(triple, list) and len(triple) == 3 else ():
                    item = linker.catalog.by_title(str(entity)) if linker else None
                    if item and item not in items:
                        items.append(item)
        if turns and turns[-1].role == role:
            turns[-1].text += "\n" + text
            turns[-1].items.extend(i for i in items if i not in turns[-1].items)
            turns[-1].meta["kg_paths"].extend(paths)
            turns[-1].meta["messages"] += 1
        else:
            turns.append(Turn(role, text, items, meta={"kg_paths": paths, "messages": 1}))
    stats.messages += sum(1 for m in messages if m.get("type") == "chat")
    ratings = {
        "user": _rating(row.get("User Rating", "{}"), "'User Rating'", stats, where),
        "assistant": _rating(row.get("Assistant Rating", "{}"), "'Assistant Rating'", stats, where),
    }
    return Dialogue(f"session-{index}", turns, ratings, source="opendialkg")


def load_opendialkg(
    path: str | pathlib.Path, catalog: Catalog | None = None, *, on_error: str = "raise"
) -> DialogueSet:
    """Dialogues from OpenDialKG: ``.jsonl`` (processed recommendation turns, one dialogue per
    record whose last turn is the recommending system turn), ``.json`` (a list of original session
    rows) or ``.csv`` (``opendialkg.csv``). With ``catalog``, titles are linked to its ids and the
    linked/unlinked counts land in ``.stats``."""
    check_mode(on_error)
    path = pathlib.Path(path)
    stats = LoadStats(file=str(path))
    linker = TitleLinker(catalog) if catalog is not None else None
    if path.suffix == ".jsonl":
        records = jsonl_records(path, stats, on_error)
        out = collect(records, lambda where, obj: _turn_record(obj, linker, stats), stats, on_error, "dialogue id")
    elif path.suffix in (".json", ".csv"):
        rows = ((f"{path}:row {i}", (i, row)) for i, row in enumerate(_rows(path), 1))
        parse = lambda where, r: _session(r[1], r[0], linker, stats, where)  # noqa: E731
        out = collect(rows, parse, stats, on_error, "dialogue id")
    else:
        raise ValueError(f"`path` {path.name!r}: unknown format; expected a .jsonl, .json or .csv file")
    stats.mentions = sum(len(t.items) for d in out for t in d.turns)
    return out


def _rows(path: pathlib.Path) -> list[dict[str, Any]]:
    """Session rows of a whole-file format; a file that cannot be read at all raises DataError
    in either error mode (there is no record to skip)."""
    if path.suffix == ".csv":
        return list(csv.DictReader(io.StringIO(read_text(path), newline="")))
    return read_json(path, list, "a JSON list of session rows")
