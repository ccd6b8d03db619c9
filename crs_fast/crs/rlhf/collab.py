"""The collaborative signal of the training dialogues as item factors for the policy's head.

``n(c, i)`` counts the training dialogues that mention both items ``c != i``; the co-occurrence
score of item ``i`` for a context that mentions the set ``S`` is ``sum_{c in S} log(1 + n(c, i))``
(the ``cooccurrence`` baseline). :func:`cooccurrence_factors` factorises ``L = log(1 + n)`` at
rank ``r`` by a randomized SVD, ``L ~ P Q^T`` with ``P = U sqrt(s)``, ``Q = V sqrt(s)``, so the
score becomes ``(sum_{c in S} P_c) . Q_i``: a context feature (the sum of its items' ``P`` rows)
dotted with an item feature, which is exactly one more block of hidden dimensions and LM-head
columns (:class:`~crs_fast.crs.rlhf.policy.Policy`), so ``linear_logprobs`` and
``topk_scores`` score it with the rest of the head. The low rank also smooths: on ReDial's
validation dialogues rank 32-256 ranked as well as the full counts or better (docs/recommender.md).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..data.schema import Catalog, Dialogue


def cooccurrence_counts(dialogues: Sequence[Dialogue], catalog: Catalog) -> tuple[torch.Tensor, torch.Tensor]:
    """(``n`` as a sparse [I, I] float32 tensor with a zero diagonal, mentions per item [I]) over
    ``dialogues``, items in ``catalog.ids()`` order; each dialogue counts an item (pair) once."""
    index = {i: n for n, i in enumerate(catalog.ids())}
    rows: list[int] = []
    cols: list[int] = []
    mentions = torch.zeros(len(index))
    for d in dialogues:
        items = sorted({index[i] for t in d.turns for i in t.items if i in index})
        mentions[items] += 1
        for a in items:
            for b in items:
                if a != b:
                    rows.append(a)
                    cols.append(b)
    n = torch.sparse_coo_tensor(
        torch.tensor([rows, cols], dtype=torch.int64).reshape(2, -1),
        torch.ones(len(rows)),
        (len(index), len(index)),
        check_invariants=True,
    ).coalesce()
    return n, mentions


def cooccurrence_factors(
    dialogues: Sequence[Dialogue], catalog: Catalog, rank: int, seed: int = 0, counts: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(P, Q), each [I, r] float32 with ``r = min(rank, I)``: the rank-``r`` randomized SVD of
    ``log(1 + n)`` split evenly, ``P Q^T ~ log(1 + n)``. Deterministic for a ``seed``; zeros when
    no two items are ever co-mentioned. ``counts``: ``n`` from :func:`cooccurrence_counts` of the
    same ``dialogues`` when the caller has it (not counted again)."""
    if rank <= 0:
        raise ValueError(f"rank must be > 0, got {rank}")
    n = cooccurrence_counts(dialogues, catalog)[0] if counts is None else counts
    size = n.shape[0]
    r = min(rank, size)
    if n._nnz() == 0:
        return torch.zeros(size, r), torch.zeros(size, r)
    log_n = torch.sparse_coo_tensor(n.indices(), torch.log1p(n.values()), n.shape, check_invariants=True).coalesce()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        u, s, v = torch.svd_lowrank(log_n, q=min(r, size), niter=4)
    root = s.clamp(min=0).sqrt()
    return (u * root).float().contiguous(), (v * root).float().contiguous()


def decayed_sums(p: torch.Tensor, items: torch.Tensor, first: torch.Tensor, length: int, decay: float) -> torch.Tensor:
    """[B, T, r] with ``T = length``: at position ``t``, ``sum_k decay^(K_t - 1 - k) p[items[b, k]]``
    over the items ``k`` first mentioned at or before ``t`` (``first[b, k] <= t``), ``K_t`` how many
    they are: the most recent item weighs 1, the one before it ``decay``, and so on. ``items``,
    ``first`` [B, M] as from :func:`~crs_fast.crs.rlhf.mention.mentioned_items` (first-mention
    order, ``-1`` / ``T`` padding); ``decay = 1`` is the plain sum. Exact for any number of items
    (weights are formed per pair, not as a running product)."""
    if not 0 < decay <= 1:
        raise ValueError(f"decay must be in (0, 1], got {decay}")
    t = torch.arange(length, device=first.device)
    seen = first[:, None, :] <= t[None, :, None]  # [B, T, M]
    later = seen.sum(-1, keepdim=True) - 1 - torch.arange(first.shape[1], device=first.device)  # K_t - 1 - k
    w = torch.pow(decay, later.clamp(min=0).to(p.dtype)) * seen
    return w @ p[items.clamp(min=0)]
