"""A generated movie catalog (titles, genres, directors, stars) for when no real one is at hand,
and a writer of synthetic dialogues in the raw ReDial format, played by :class:`UserSimulator`
against a scripted system. Deterministic for a seed."""

from __future__ import annotations

import json
import pathlib
import random
from collections.abc import Sequence

from .schema import Catalog, Item
from .simulator import UserSimulator

_ADJ = [
    "Silent",
    "Last",
    "Hidden",
    "Broken",
    "Golden",
    "Midnight",
    "Crimson",
    "Lost",
    "Wild",
    "Frozen",
    "Electric",
    "Distant",
    "Secret",
    "Burning",
    "Quiet",
    "Iron",
    "Paper",
    "Glass",
    "Velvet",
    "Hollow",
]


_NOUN = [
    "River",
    "Empire",
    "Garden",
    "Signal",
    "Harbor",
    "Mirror",
    "Kingdom",
    "Orchard",
    "Station",
    "Frontier",
    "Promise",
    "Voyage",
    "Circus",
    "Lantern",
    "Storm",
    "Island",
    "Letter",
    "Machine",
    "Summer",
    "Shadow",
]


_GENRES = [
    "action",
    "adventure",
    "animation",
    "comedy",
    "crime",
    "documentary",
    "drama",
    "family",
    "fantasy",
    "horror",
    "mystery",
    "romance",
    "sci-fi",
    "thriller",
    "western",
]


_FIRST = [
    "Ava",
    "Ben",
    "Cleo",
    "Dev",
    "Eli",
    "Faye",
    "Gus",
    "Hana",
    "Ivo",
    "Jun",
    "Kai",
    "Lena",
    "Milo",
    "Nora",
    "Omar",
    "Pia",
    "Quinn",
    "Rosa",
    "Sami",
    "Tess",
]


_LAST = [
    "Abara",
    "Brook",
    "Castell",
    "Dorn",
    "Ekwu",
    "Fable",
    "Greer",
    "Hollis",
    "Ito",
    "Jarvi",
    "Kessler",
    "Lund",
    "Marlow",
    "Novak",
    "Okafor",
    "Pryce",
    "Quill",
    "Rahm",
    "Sato",
    "Thorne",
]


def generate_catalog(n_items: int = 600, *, seed: int = 0) -> Catalog:
    """A synthetic movie catalog (titles, years, 1-3 genres, a director, 2-4 stars), ours, for
    running without the real datasets."""
    rng = random.Random(seed)
    directors = [f"{rng.choice(_FIRST)} {rng.choice(_LAST)}" for _ in range(max(8, n_items // 10))]
    stars = [f"{rng.choice(_FIRST)} {rng.choice(_LAST)}" for _ in range(max(20, n_items // 4))]
    items, seen = [], set()
    for k in range(n_items):
        title = f"The {rng.choice(_ADJ)} {rng.choice(_NOUN)}"
        while title in seen:
            title = f"{title} {rng.randint(2, 9)}"
        seen.add(title)
        year = rng.randint(1960, 2023)
        attrs = {
            "genre": rng.sample(_GENRES, rng.randint(1, 3)),
            "director": [rng.choice(directors)],
            "star": rng.sample(stars, rng.randint(2, 4)),
            "year": [str(year)],
        }
        items.append(Item(str(10_000 + k), f"{title} ({year})", attrs))
    return Catalog(items, source=f"generated(seed={seed})")


_SYS_SUGGEST = [
    "Have you seen @{id}? It's a great {genre} movie.",
    "You might like @{id}.",
    "How about @{id}? {star} is in it.",
    "I'd recommend @{id}, a {genre} favourite.",
]


_SYS_ASK = ["What kind of movies do you like?", "Any favourite actors?", "Ok.", "Hmm, let me think."]


SYSTEM_PHRASES = [*_SYS_SUGGEST, *_SYS_ASK]  # what the synthetic dialogues' system turns say


def write_synthetic_redial(
    catalog: Catalog,
    n_users: int,
    path: str | pathlib.Path,
    *,
    seed: int = 0,
    hit_rate: float = 0.3,
    ask_rate: float = 0.15,
    pool: Sequence[str] | None = None,
) -> pathlib.Path:
    """Simulate ``n_users`` dialogues against a noisy recommender (a question without a suggestion
    with probability ``ask_rate``, else a target with probability ``hit_rate``, else an item of the
    ``pool`` sharing a genre, else a random pool item) and write them in the raw ReDial JSONL format
    (``timeOffset`` from the simulated dwell, liked/seen labels from the feedback), so the ReDial
    loader, labels and metrics apply unchanged."""
    rng = random.Random(seed)
    user = UserSimulator(catalog, pool=pool)
    ids = user.pool
    path = pathlib.Path(path)
    with open(path, "w", encoding="utf-8") as f:
        for n in range(n_users):
            text = user.reset(seed * 1_000_003 + n)
            t, messages, mentions, questions = 0.0, [], {}, {}
            messages.append({"messageId": 0, "text": text, "timeOffset": 0, "senderWorkerId": 1})
            mentions[user.liked[0]] = catalog[user.liked[0]].title
            questions[user.liked[0]] = {"suggested": 0, "seen": 1, "liked": 1}
            done = False
            while not done:
                if rng.random() < ask_rate:
                    ask = rng.choice(_SYS_ASK)
                    t += rng.uniform(8, 30)
                    messages.append(
                        {"messageId": len(messages), "text": ask, "timeOffset": round(t), "senderWorkerId": 2}
                    )
                    reply, fb, done = user.step(ask, [])
                    t += fb.dwell
                    messages.append(
                        {"messageId": len(messages), "text": reply, "timeOffset": round(t), "senderWorkerId": 1}
                    )
                    continue
                u = rng.random()
                if u < hit_rate:
                    item = rng.choice(sorted(user.targets))
                elif u < hit_rate + 0.35:
                    genre = rng.choice([v for (a, v) in user.taste if a == "genre"] or ["-"])
                    item = rng.choice(user.by_value.get(("genre", genre)) or ids)
                else:
                    item = rng.choice(ids)
                it = catalog[item]
                reply_to = rng.choice(_SYS_SUGGEST).format(
                    id=item,
                    genre=(it.attributes.get("genre") or ["fun"])[0],
                    star=(it.attributes.get("star") or ["a star"])[0],
                )
                t += rng.uniform(8, 30)
                messages.append(
                    {"messageId": len(messages), "text": reply_to, "timeOffset": round(t), "senderWorkerId": 2}
                )
                mentions[item] = it.title
                reply, fb, done = user.step(reply_to, [item])
                liked = 1 if fb.sentiment > 0.2 else 0 if fb.sentiment < -0.2 else 2
                questions[item] = {"suggested": 1, "seen": int(rng.random() < 0.3), "liked": liked}
                t += fb.dwell
                messages.append(
                    {"messageId": len(messages), "text": reply, "timeOffset": round(t), "senderWorkerId": 1}
                )
            record = {
                "conversationId": f"synth-{seed}-{n}",
                "initiatorWorkerId": 1,
                "respondentWorkerId": 2,
                "movieMentions": mentions,
                "initiatorQuestions": questions,
                "respondentQuestions": questions,
                "messages": messages,
            }
            f.write(json.dumps(record) + "\n")
    return path
