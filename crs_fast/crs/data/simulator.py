"""Synthetic users with a hidden taste (RecSim-style dynamics); the catalogs and ReDial-format
dialogues they are paired with are in :mod:`.synthetic`.

A user holds weights over attribute values (genres, a director, stars) taken from an anchor item
they liked, one to three target items that fit that taste, and a time budget. Each suggestion is
scored by its fit (the share of the taste's weight it matches; a target fits 1): a good one
(fit >= 0.6) gives positive sentiment, longer dwell, a longer reply and one more turn of budget;
a bad one the opposite, and the user leaves when the budget runs out. A target accepted ends
the dialogue with satisfaction 1. Everything is deterministic for a seed.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from .schema import Catalog

ATTRIBUTES = ("genre", "director", "star")


_WEIGHT = {"genre": 1.0, "director": 0.7, "star": 0.5, "actor": 0.5}


GOOD_FIT = 0.6


@dataclass
class Feedback:
    """What a simulated user did after a system turn."""

    dwell: float  # seconds before answering
    sentiment: float  # [-1, 1]
    engagement: float  # [0, 1]: 0 when the user leaves, else the reply's length (saturating)
    accepted: bool  # a target item was suggested
    satisfaction: float  # [0, 1]: running mean fit of the suggestions, 1 once a target is accepted


_GREET = [
    "Hi! I'm looking for a {genre} movie tonight.",
    "Hello, can you recommend something {genre}?",
    "Hey! I really enjoyed {liked}. Anything similar?",
    "Hi there, I'm in the mood for {genre}. I loved {liked}.",
    "Good evening! I like movies with {star}. Any ideas?",
]


_GOOD = [
    "Oh, {title} sounds great, I love {genre}!",
    "That looks promising, I like {star}.",
    "Nice, {title} might be what I want. Anything else like it?",
    "Good one! {genre} is my thing.",
]


_BAD = [
    "Hmm, not really my thing. I prefer {genre}.",
    "I don't think so. Something more like {liked}?",
    "Not for me, sorry. Maybe something with {star}?",
    "Meh. I was hoping for {genre}.",
]


_ACCEPT = [
    "Perfect, I'll watch {title}. Thanks!",
    "Yes! {title} is exactly what I wanted, thank you.",
    "Great pick, {title} it is. Bye!",
]


_LEAVE = ["I think I'll look elsewhere, bye.", "Never mind, thanks anyway.", "I'll pass for now. Goodbye."]


_ASK = [  # worded so their polarity (VADER) matches the feedback: a turn without a suggestion disappoints
    "Hmm, no title? I am not sure that helps. Something {genre}?",
    "No suggestion? That does not help. Anything with {star}?",
    "That does not help. Just name a movie with {star}.",
]


# Every phrase a simulated user may say, in a fixed order (the tiny model's tokenizer is built over them).
USER_PHRASES = [*_GREET, *_GOOD, *_BAD, *_ACCEPT, *_LEAVE, *_ASK]


class UserSimulator:
    """One synthetic user over ``catalog``: ``reset(seed)`` draws the user and returns their first
    message; ``step(system_text, item_ids)`` returns (reply, :class:`Feedback`, done).

    ``pool`` (catalog ids; default all) is the part of the catalog users know: their anchor and
    targets come from it, while any catalog item can be suggested and is judged by its fit."""

    def __init__(
        self,
        catalog: Catalog,
        *,
        budget: int = 4,
        max_turns: int = 10,
        attributes: Sequence[str] = ATTRIBUTES,
        pool: Sequence[str] | None = None,
    ) -> None:
        self.catalog = catalog
        self.attributes = tuple(a for a in attributes if any(it.attributes.get(a) for it in catalog.items.values()))
        if not self.attributes:
            raise ValueError(f"the catalog has none of the attributes {tuple(attributes)}")
        if pool is not None:
            unknown = [i for i in pool if i not in catalog]
            if unknown:
                raise ValueError(f"pool: {len(unknown)} ids are not in the catalog, e.g. {unknown[:3]}")
        self.pool = list(dict.fromkeys(pool)) if pool is not None else catalog.ids()
        self.by_value: dict[tuple[str, str], list[str]] = defaultdict(list)
        for i in self.pool:
            for attr in self.attributes:
                for value in catalog[i].attributes.get(attr, []):
                    self.by_value[(attr, value)].append(i)
        self.anchors = [
            i
            for i in self.pool
            if (it := catalog[i]).attributes.get(self.attributes[0])
            and sum(bool(it.attributes.get(a)) for a in self.attributes) >= 2
        ]
        if not self.anchors:
            raise ValueError("no pool item has enough attributes to build a user's taste")
        self.initial_budget, self.max_turns = budget, max_turns

    def fit(self, item_id: str) -> float:
        """Share of the user's taste that ``item_id`` matches; 1 for a target, 0 if unknown."""
        if item_id in self.targets:
            return 1.0
        item = self.catalog.items.get(item_id)
        if item is None:
            return 0.0
        hit = sum(w for (a, v), w in self.taste.items() if v in item.attributes.get(a, []))
        return hit / sum(self.taste.values())

    def reset(self, seed: int) -> str:
        """Draw a user (taste, targets, budget) from ``seed``; returns their first message."""
        self.rng = rng = random.Random(seed)
        anchor = self.catalog.items[rng.choice(self.anchors)]
        self.taste = {}
        for attr in self.attributes:
            values = anchor.attributes.get(attr, [])
            for value in rng.sample(values, min(len(values), 2 if attr != "director" else 1)):
                self.taste[(attr, value)] = _WEIGHT.get(attr, 0.5)
        self.targets: set[str] = set()
        pool = sorted({i for key in self.taste for i in self.by_value[key]} - {anchor.id})
        scored = sorted(pool, key=lambda i: (-self.fit(i), i))[:20]
        good = [i for i in scored if self.fit(i) >= 0.5] or scored or [anchor.id]
        self.targets = set(rng.sample(good, min(len(good), rng.randint(1, 3))))
        self.liked = [anchor.id]
        self.budget, self.turns, self.fits, self.suggested = self.initial_budget, 0, [], set()
        self.done = False
        return self._say(_GREET)

    def _say(self, templates: list[str], title: str = "") -> str:
        genres = [v for (a, v) in self.taste if a == "genre"] or ["good"]
        stars = [v for (a, v) in self.taste if a in ("star", "actor")] or ["great actors"]
        return self.rng.choice(templates).format(
            genre=self.rng.choice(genres),
            star=self.rng.choice(stars),
            liked=self.catalog[self.liked[0]].title,
            title=title,
        )

    def step(self, system_text: str, recommended_item_ids: Sequence[str]) -> tuple[str, Feedback, bool]:
        """The user's answer to a system turn that suggests ``recommended_item_ids``."""
        if self.done:
            raise RuntimeError("the dialogue is over; call reset() first")
        self.turns += 1
        recs = [i for i in dict.fromkeys(recommended_item_ids) if i in self.catalog]
        fits = [self.fit(i) * (0.5 if i in self.suggested else 1.0) for i in recs]
        self.suggested.update(recs)
        accepted = any(i in self.targets for i in recs)
        quality = max(fits) if fits else 0.2
        self.fits.append(quality)
        self.budget += 1 if quality >= GOOD_FIT else -1
        noise = self.rng.gauss(0.0, 0.1)
        best = recs[fits.index(max(fits))] if recs else None
        title = self.catalog[best].title if best else ""
        if accepted:
            reply = self._say(_ACCEPT, title)
        elif self.budget <= 0 or self.turns >= self.max_turns:
            reply = self._say(_LEAVE)
        elif not recs:
            reply = self._say(_ASK)
        else:
            reply = self._say(_GOOD if quality >= GOOD_FIT else _BAD, title)
        self.done = accepted or self.budget <= 0 or self.turns >= self.max_turns
        leaving = self.done and not accepted
        feedback = Feedback(
            dwell=max(1.0, 6.0 + 40.0 * quality + len(system_text) / 20.0 + 5.0 * noise),
            sentiment=max(-1.0, min(1.0, 2.0 * quality - 1.0 + noise)),
            engagement=0.0 if leaving else min(1.0, len(reply) / 60.0),
            accepted=accepted,
            satisfaction=1.0 if accepted else sum(self.fits) / len(self.fits),
        )
        self.last_feedback = feedback
        return reply, feedback, self.done


class SimulatorBatch:
    """``n`` independent users stepped together."""

    def __init__(self, catalog: Catalog, n: int, **kwargs) -> None:
        self.users = [UserSimulator(catalog, **kwargs) for _ in range(n)]

    def reset(self, seeds: Sequence[int]) -> list[str]:
        """First messages of users drawn from ``seeds`` (one per user)."""
        return [u.reset(s) for u, s in zip(self.users, seeds, strict=True)]

    def step(self, texts: Sequence[str], recs: Sequence[Sequence[str]]) -> tuple[list[str], list[Feedback], list[bool]]:
        """Step every user still talking; finished users answer "" and repeat their last feedback."""
        out = []
        for u, text, items in zip(self.users, texts, recs, strict=True):
            out.append(("", u.last_feedback, True) if u.done else u.step(text, items))
        replies, feedback, done = zip(*out, strict=True)
        return list(replies), list(feedback), list(done)
