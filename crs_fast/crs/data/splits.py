"""Deterministic splits and evaluation samples."""

import hashlib
from collections.abc import Sequence

from .schema import Dialogue, RecSample


def split_dialogues(
    dialogues: Sequence[Dialogue], fractions: Sequence[float] = (0.8, 0.1, 0.1), *, seed: int = 0
) -> list[list[Dialogue]]:
    """Split by a seeded hash of each dialogue id: the same seed and ids give the same split,
    whatever the input order."""
    if any(f < 0 for f in fractions) or abs(sum(fractions) - 1.0) > 1e-9:
        raise ValueError(f"`fractions` must be non-negative and sum to 1, got {list(fractions)}")
    bounds, total = [], 0.0
    for f in fractions:
        total += f
        bounds.append(total)
    out: list[list[Dialogue]] = [[] for _ in fractions]
    for d in dialogues:
        u = int(hashlib.sha256(f"{seed}:{d.id}".encode()).hexdigest()[:12], 16) / 16**12
        out[next(i for i, b in enumerate(bounds) if u < b or i == len(bounds) - 1)].append(d)
    return out


def rec_samples(dialogues: Sequence[Dialogue], *, dedup: bool = False) -> list[RecSample]:
    """One sample per ground-truth item of each system turn (the items it mentions). With
    ``dedup``, items already mentioned earlier in the dialogue are not targets."""
    out = []
    for d in dialogues:
        mentioned: list[str] = []
        for i, turn in enumerate(d.turns):
            if turn.role == "system":
                for item in turn.items:
                    if dedup and item in mentioned:
                        continue
                    out.append(RecSample(d.id, i, d.turns[:i], [item], list(mentioned)))
            mentioned.extend(x for x in turn.items if x not in mentioned)
    return out
