"""Line- and row-level reading shared by the loaders: errors that name file and line, or
skipping with the reason recorded."""

import json
import pathlib
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from .schema import DataError, Dialogue, DialogueSet, LoadStats


class Problem(Exception):
    """A malformed record (raised inside a record parser)."""


def check_mode(on_error: str) -> None:
    """``on_error`` must be "raise" or "skip"."""
    if on_error not in ("raise", "skip"):
        raise ValueError(f"`on_error` must be 'raise' or 'skip', got {on_error!r}")


def report(stats: LoadStats, where: str, reason: str, on_error: str) -> None:
    """Raise a DataError naming ``where``, or count and record the skip."""
    if on_error == "raise":
        raise DataError(f"{where}: {reason}")
    stats.skipped += 1
    stats.skip_reasons.append(f"{where}: {reason}")


_UTF8_BOM = b"\xef\xbb\xbf"
_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")


def _utf8(raw: bytes, file_start: bool) -> str:
    """UTF-8 text of ``raw``; at the start of a file a UTF-8 BOM is dropped and UTF-16 refused.
    Raises Problem, or UnicodeDecodeError for invalid bytes (``object[start]`` is the bad byte)."""
    if file_start:
        if raw.startswith(_UTF16_BOMS):
            raise Problem("the file is UTF-16 text; save it as UTF-8")
        raw = raw.removeprefix(_UTF8_BOM)
    return raw.decode("utf-8")


def decode_line(raw: bytes, lineno: int) -> str:
    """A line of UTF-8 text (a BOM on line 1 is dropped); raises Problem on other encodings."""
    try:
        return _utf8(raw, lineno == 1)
    except UnicodeDecodeError as exc:
        raise Problem(f"invalid UTF-8 (byte 0x{exc.object[exc.start]:02x} at column {exc.start + 1})") from None


def parse_json(text: str) -> Any:
    """``json.loads``; raises Problem on invalid or too deeply nested JSON."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise Problem(f"invalid JSON ({exc.msg} at column {exc.colno})") from None
    except RecursionError:
        raise Problem("JSON nested too deeply to read") from None


def jsonl_records(path: pathlib.Path, stats: LoadStats, on_error: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """(location "file:line", object) for each non-empty line that is a JSON object. Lines that
    are not UTF-8 text, not JSON or not an object are errors of that line (raised or skipped)."""
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            where = f"{path}:{lineno}"
            try:
                line = decode_line(raw, lineno)
                if not line.strip():
                    continue
                obj = parse_json(line)
            except Problem as exc:
                report(stats, where, str(exc), on_error)
                continue
            if not isinstance(obj, dict):
                report(stats, where, f"expected a JSON object, got {type(obj).__name__}", on_error)
                continue
            yield where, obj


def read_text(path: str | pathlib.Path) -> str:
    """A whole UTF-8 text file (BOM dropped); DataError naming the file on other encodings."""
    try:
        return _utf8(pathlib.Path(path).read_bytes(), True)
    except Problem as exc:
        raise DataError(f"{path}: {exc}") from None
    except UnicodeDecodeError as exc:
        line = exc.object[: exc.start].count(b"\n") + 1
        raise DataError(f"{path}:{line}: invalid UTF-8 (byte 0x{exc.object[exc.start]:02x})") from None


def read_json(path: str | pathlib.Path, kind: type | tuple[type, ...], what: str) -> Any:
    """A whole JSON file whose top level is ``kind``; DataError naming the file (and line) when it
    is empty, truncated, not JSON or of another type. ``what`` says what it should hold."""
    text = read_text(path)
    if not text.strip():
        raise DataError(f"{path}: the file is empty; expected {what}")
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(
            f"{path}:{exc.lineno}: invalid JSON ({exc.msg} at column {exc.colno}); expected {what}"
        ) from None
    except RecursionError:
        raise DataError(f"{path}: JSON nested too deeply to read") from None
    if not isinstance(value, kind):
        raise DataError(f"{path}: expected {what}, got a JSON {type(value).__name__}")
    return value


def str_list(value: Any, what: str) -> list[str]:
    """A list of strings or numbers as strings; Problem for anything else (a bare string would
    otherwise be read as its characters)."""
    if not isinstance(value, list) or not all(
        isinstance(x, (str, int, float)) and not isinstance(x, bool) for x in value
    ):
        raise Problem(f"{what} must be a list of strings, got {type(value).__name__} {str(value)[:40]!r}")
    return [str(x) for x in value]


def integer(value: Any, what: str) -> int:
    """An integer label: a JSON int (or a float with no fraction); Problem for anything else."""
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or (isinstance(value, float) and not value.is_integer())
    ):
        raise Problem(f"{what} must be an integer, got {value!r}")
    return int(value)


def field(obj: dict[str, Any], name: str, kind: type | tuple[type, ...], *, optional: bool = False) -> Any:
    """``obj[name]`` if it has the expected type; raises Problem naming the field otherwise."""
    if name not in obj:
        if optional:
            return None
        raise Problem(f"missing field {name!r}")
    value = obj[name]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):  # bool is an int
        names = "/".join(k.__name__ for k in kinds)
        raise Problem(f"field {name!r} must be {names}, got {type(value).__name__}")
    return value


def collect(
    records: Iterable[tuple[str, Any]],
    parse: Callable[[str, Any], Dialogue],
    stats: LoadStats,
    on_error: str,
    id_name: str,
) -> DialogueSet:
    """The dialogues ``parse`` makes of each ``(where, record)``, in order. A :class:`Problem` (or a
    second dialogue with an id already read, ``id_name`` naming the field) raises
    :class:`DataError` at ``where`` or, with ``on_error="skip"``, is recorded in ``stats`` and the
    record skipped. Fills ``stats.turns``, ``stats.dialogues`` and ``stats.items``."""
    out = DialogueSet(stats=stats)
    items: set[str] = set()
    first_seen: dict[str, str] = {}
    for where, obj in records:
        try:
            dialogue = parse(where, obj)
            if dialogue.id in first_seen:
                raise Problem(f"duplicate {id_name} {dialogue.id!r} (first at {first_seen[dialogue.id]})")
        except Problem as exc:
            report(stats, where, str(exc), on_error)
            continue
        first_seen[dialogue.id] = where
        out.append(dialogue)
        stats.turns += len(dialogue.turns)
        for turn in dialogue.turns:
            items.update(turn.items)
    stats.dialogues, stats.items = len(out), len(items)
    return out
