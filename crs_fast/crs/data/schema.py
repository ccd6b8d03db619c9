"""The data model shared by every dataset: dialogues of turns with item mentions, an item
catalog, evaluation samples, and what each loader reports about what it read."""

import os
import pathlib
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal


class DataError(ValueError):
    """Malformed input; the message names the file and the line (or row)."""


@dataclass
class Turn:
    """One speaker's consecutive messages. ``items`` are catalog ids mentioned, in order;
    ``time`` is seconds since the dialogue began (first message of the turn), None if unknown."""

    role: Literal["user", "system"]
    text: str
    items: list[str] = field(default_factory=list)
    time: float | None = None
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class Dialogue:
    """A conversation; ``ratings`` holds the dataset's explicit labels (ReDial: per-movie
    suggested/seen/liked; OpenDialKG: dialogue ratings)."""

    id: str
    turns: list[Turn]
    ratings: dict[str, Any] = field(default_factory=dict)
    source: str = ""


@dataclass
class Item:
    """A catalog entry: id, display title and attribute lists (genre, director, star, ...)."""

    id: str
    title: str
    attributes: dict[str, list[str]] = field(default_factory=dict)


def normalize_title(title: str) -> str:
    """Lower case, accents and punctuation removed, a trailing "(year)" dropped, spaces collapsed."""
    t = unicodedata.normalize("NFKD", title).encode("ascii", "ignore").decode()
    t = re.sub(r"\(\s*\d{4}\s*\)\s*$", "", t.lower())
    t = re.sub(r"[^a-z0-9]+", " ", t)
    return " ".join(t.split())


class Catalog:
    """Items by id, with lookup by normalised title."""

    def __init__(self, items: Iterable[Item], source: str = "") -> None:
        self.items: dict[str, Item] = {}
        for item in items:
            self.items[item.id] = item
        self.source = source
        self._by_title: dict[str, str] = {}
        for item in self.items.values():
            self._by_title.setdefault(normalize_title(item.title), item.id)

    def __len__(self) -> int:
        return len(self.items)

    def __contains__(self, item_id: object) -> bool:
        return item_id in self.items

    def __getitem__(self, item_id: str) -> Item:
        return self.items[item_id]

    def ids(self) -> list[str]:
        """Item ids in catalog order."""
        return list(self.items)

    def by_title(self, title: str) -> str | None:
        """The id of the item whose normalised title equals ``title``'s, or None."""
        return self._by_title.get(normalize_title(title))

    def titles(self) -> dict[str, str]:
        """Normalised title -> id."""
        return dict(self._by_title)


@dataclass
class RecSample:
    """An evaluation sample: the dialogue so far, the ground-truth item(s) of the next system
    turn, and the items already mentioned in the context."""

    dialogue_id: str
    turn_index: int
    context: list[Turn]
    targets: list[str]
    mentioned: list[str]


@dataclass
class LoadStats:
    """What a loader read, resolved and skipped (with reasons)."""

    file: str = ""
    dialogues: int = 0
    turns: int = 0
    messages: int = 0
    items: int = 0
    mentions: int = 0
    unresolved_mentions: int = 0
    linked_titles: int = 0
    unlinked_titles: int = 0
    skipped_actions: int = 0
    dropped_ratings: int = 0
    skipped: int = 0
    skip_reasons: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # values dropped inside records that were kept

    def as_dict(self) -> dict[str, Any]:
        """Plain dict (for JSON and tables)."""
        return dict(self.__dict__)


class DialogueSet(list):
    """A list of :class:`Dialogue` with the loader's :class:`LoadStats` as ``.stats``."""

    def __init__(self, dialogues: Iterable[Dialogue] = (), stats: LoadStats | None = None) -> None:
        super().__init__(dialogues)
        self.stats = stats or LoadStats()


def data_dir() -> pathlib.Path:
    """The real-data directory: ``$CRS_FAST_DATA``, else ``../shared/data`` from the current
    directory (the project root). It may not exist; callers check."""
    env = os.environ.get("CRS_FAST_DATA")
    return pathlib.Path(env) if env else pathlib.Path.cwd().parent / "shared" / "data"
