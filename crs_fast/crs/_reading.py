"""Line- and row-level reading shared by the loaders: errors that name file and line, or
skipping with the reason recorded."""

import json
import pathlib
from collections.abc import Iterator
from typing import Any

from .schema import DataError, LoadStats


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


def jsonl_records(path: pathlib.Path, stats: LoadStats, on_error: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """(location "file:line", object) for each non-empty line that is a JSON object."""
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                report(stats, where, f"invalid JSON ({exc.msg} at column {exc.colno})", on_error)
                continue
            if not isinstance(obj, dict):
                report(stats, where, f"expected a JSON object, got {type(obj).__name__}", on_error)
                continue
            yield where, obj


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
