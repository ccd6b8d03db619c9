"""Trivial and classical recommenders, ranked on the same samples as the policies.

Each baseline ranks the whole catalog for a context, given the items the context mentions (in
order) and, where it learns anything, the training dialogues of the same source:

* ``popularity``: items by their number of mentions in the training dialogues (ties: catalog order).
* ``repeat``: the items the context mentions, the most recent first; nothing else is ranked. Under
  the dedup protocol (mentioned items excluded) it scores 0 by construction.
* ``cooccurrence``: ``score(i) = sum_c log(1 + n(c, i))`` over the context's items ``c``, with
  ``n(c, i)`` the training dialogues that mention both; popularity breaks ties (and ranks
  everything when the context names no item the training data co-mentions).
* ``content``: cosine similarity of the sentence encoder's embeddings of the context and of each
  item's text with its attributes (title; genres, director, stars), as R_phi sees a recommendation.

A ranking is a list of catalog indices (positions in ``catalog.ids()``), best first.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..data.schema import Catalog, Dialogue
from .collab import cooccurrence_counts
from .lm import item_token, render

NAMES = ("popularity", "repeat", "cooccurrence", "content")


class Baselines:
    """The baselines of one dataset: counts from ``train`` (dialogues of the evaluation's own
    source), item texts from ``catalog``; ``encoder`` (a :class:`SentenceEncoder`) for ``content``."""

    def __init__(self, catalog: Catalog, train: Sequence[Dialogue], encoder=None) -> None:
        self.catalog = catalog
        self.ids = list(catalog.ids())
        self.index = {i: n for n, i in enumerate(self.ids)}
        self.encoder = encoder
        n, pop = cooccurrence_counts(train, catalog)  # the counts the policy's factors come from
        self._log_n = torch.sparse_coo_tensor(n.indices(), torch.log1p(n.values()), n.shape).coalesce()
        counts = {i: int(c) for i, c in enumerate(pop.tolist()) if c}
        # popularity as a tie-breaker smaller than any co-occurrence step
        self._pop_tiebreak = pop / (pop.max().clamp(min=1.0) * 1e3)
        self._popularity = sorted(range(len(self.ids)), key=lambda n: (-counts.get(n, 0), n))
        self._item_vectors: torch.Tensor | None = None

    def rank(self, name: str, mentioned: Sequence[str], context: str, k: int) -> list[int]:
        """The top ``k`` catalog indices of baseline ``name`` for a context that mentions
        ``mentioned`` (in order) and reads ``context``."""
        if name == "popularity":
            return self._popularity[:k]
        if name == "repeat":
            seen = [self.index[i] for i in reversed(mentioned) if i in self.index]
            return list(dict.fromkeys(seen))[:k]
        if name == "cooccurrence":
            context = sorted({self.index[i] for i in mentioned if i in self.index})
            if not context:
                return _top(self._pop_tiebreak, k)
            rows = self._log_n.index_select(0, torch.tensor(context)).to_dense()
            return _top(self._pop_tiebreak + rows.sum(0), k)
        if name == "content":
            return _top(self.item_vectors() @ self.encoder.encode([context])[0], k)
        raise ValueError(f"unknown baseline {name!r}; expected one of {NAMES}")

    def item_vectors(self) -> torch.Tensor:
        """[I, D] sentence embeddings of each item as R_phi sees a recommendation: its title with
        genres, director and stars (:func:`render` with ``details``)."""
        if self.encoder is None:
            raise ValueError("the content baseline needs a sentence encoder")
        if self._item_vectors is None:
            texts = [render(item_token(i), self.catalog, details=True) for i in self.ids]
            self._item_vectors = self.encoder.encode(texts)
        return self._item_vectors


def _top(score: torch.Tensor, k: int) -> list[int]:
    """Indices of the ``k`` largest scores, ties to the lower index."""
    k = min(k, score.numel())
    order = torch.sort(score, descending=True, stable=True).indices
    return order[:k].tolist()


def sample_key(sample) -> str:
    """What a baseline's ranking depends on: the prompt and the items the context mentions (two
    synthetic users may open with the same words about different liked items)."""
    return sample.prompt + "\x00" + "\x1f".join(sample.mentioned)


def baseline_lists(
    baselines: Baselines, name: str, samples: Sequence, k: int, render_text=None
) -> dict[str, list[int]]:
    """Baseline ``name``'s top ``k`` for each distinct :func:`sample_key` of ``samples`` (objects with
    ``prompt`` and ``mentioned``). ``render_text`` turns a prompt into what the sentence encoder
    reads (item tokens as titles)."""
    out: dict[str, list[int]] = {}
    if name == "content":  # one batched encoding of every context (the encoder caches each text)
        baselines.encoder.encode([render_text(s.prompt) if render_text else s.prompt for s in samples])
    for s in samples:
        key = sample_key(s)
        if key not in out:
            text = render_text(s.prompt) if render_text else s.prompt
            out[key] = baselines.rank(name, s.mentioned, text, k)
    return out
