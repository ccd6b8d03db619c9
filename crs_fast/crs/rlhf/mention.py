"""Items already in a context: where each is first mentioned, and the mention bonus applied
exactly on top of a fused LM head.

The policy's next-token logits with the bonus are ``z' = z + beta [i in S_t]`` (``S_t`` the items
among the tokens up to ``t``). Over a vocabulary of ~57k tokens of which a context mentions a
handful, that is a rank-deficient, row-specific change no head column can carry; but the
log-probabilities and the entropy of ``softmax(z')`` follow from those of ``softmax(z)``
(``linear_logprobs``' outputs, no ``[N, V]`` logits) and the logits of the mentioned items alone
(:func:`correct_logprobs`), and a ranking from a top-k of the others plus the mentioned items'
own scores (:func:`merge_topk`).
"""

from __future__ import annotations

import torch


def first_mentions(item_index: torch.Tensor, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(flat positions ``b * T + t`` ascending, catalog indices): each distinct item of each row of
    ``input_ids`` [B, T] at its first mention; ``item_index`` [V] maps a token to its catalog
    index (-1 for text tokens)."""
    B, _ = input_ids.shape
    n_items = int(item_index.max()) + 1
    idx = item_index[input_ids]
    key = torch.where(idx >= 0, idx + n_items * torch.arange(B, device=idx.device)[:, None], -1).flatten()
    pos = (key >= 0).nonzero().squeeze(1)
    order = torch.sort(key[pos], stable=True).indices  # equal keys keep their positions' order
    sorted_keys = key[pos][order]
    first = torch.ones_like(sorted_keys, dtype=torch.bool)
    first[1:] = sorted_keys[1:] != sorted_keys[:-1]
    at = pos[order[first]].sort().values
    return at, key[at] % n_items


def mentioned_items(item_index: torch.Tensor, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(items, first), each [B, M]: the catalog indices of each row's distinct items in
    first-mention order (-1 after the row's last) and the position of their first mention (``T``
    for padding), so item ``items[b, m]`` is in ``S_t`` iff ``first[b, m] <= t``."""
    B, T = input_ids.shape
    at, item = first_mentions(item_index, input_ids)
    b, t = at // T, at % T
    counts = torch.bincount(b, minlength=B)
    m = int(counts.max()) if len(b) else 0
    slot = torch.arange(len(b), device=b.device) - (counts.cumsum(0) - counts)[b]
    items = torch.full((B, m), -1, dtype=torch.int64, device=b.device)
    first = torch.full((B, m), T, dtype=torch.int64, device=b.device)
    items[b, slot], first[b, slot] = item, t
    return items, first


def correct_logprobs(
    lp: torch.Tensor,
    ent: torch.Tensor,
    z_label: torch.Tensor,
    z_items: torch.Tensor,
    in_s: torch.Tensor,
    hit: torch.Tensor,
    beta: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(lp', entropy') of ``softmax(z + beta [i in S])`` from (``lp``, ``ent``) of ``softmax(z)``
    (any shape ``[...]``), the label's logit ``z_label`` [...], the candidate items' logits
    ``z_items`` [..., M] with ``in_s`` [..., M] saying which are in ``S``, ``hit`` [...] whether the
    label is in ``S``. With ``u_i = z_i - log Z`` (``log Z = z_label - lp``), ``p_i = e^u_i``,
    ``s = sum_S p_i`` and ``delta = log(1 + s expm1(beta))``: ``lp' = lp + beta hit - delta`` and
    ``H' = delta + e^-delta (H - sum_S p_i (u_i expm1(beta) + beta e^beta))``. fp32; differentiable
    in every input."""
    log_z = z_label.float() - lp.float()
    u = torch.where(in_s, z_items.float() - log_z[..., None], torch.zeros_like(z_items, dtype=torch.float32))
    p = torch.where(in_s, u.exp(), torch.zeros_like(u))
    em1 = torch.expm1(beta)
    delta = torch.log1p(p.sum(-1) * em1)
    lp2 = lp.float() + beta * hit - delta
    ent2 = delta + torch.exp(-delta) * (ent.float() - (p * (u * em1 + beta * torch.exp(beta))).sum(-1))
    return lp2, ent2


def policy_logprobs(policy, h, input_ids, labels, lp, ent, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """A :class:`~crs_fast.crs.rlhf.policy.Policy`'s ``linear_logprobs`` outputs (lp, entropy)
    [B, T] without its mention bonus turned into those with it (:func:`correct_logprobs`): ``h``
    [B, T, H'] the states its head scored, ``labels`` [B, T] the next tokens, ``S_t`` the items
    among ``input_ids[:, :t+1]``, logits divided by ``temperature``."""
    items, first = policy.mentioned_items(input_ids)
    if items.shape[1] == 0:
        return lp, ent
    in_s = first[:, None, :] <= torch.arange(input_ids.shape[1], device=h.device)[None, :, None]
    hf = h.float()
    z_y = (hf * policy.head()[labels].float()).sum(-1) / temperature
    z_items = torch.einsum("btd,bmd->btm", hf, policy.item_rows().float()[items.clamp(min=0)]) / temperature
    hit = ((policy.item_index[labels][..., None] == items[:, None, :]) & in_s).any(-1)
    beta = policy.item_repeat.float() / temperature
    lp2, ent2 = correct_logprobs(lp, ent, z_y, z_items, in_s, hit, beta)
    return lp2.to(lp.dtype), ent2.to(ent.dtype)


def merge_topk(val: torch.Tensor, idx: torch.Tensor, score: torch.Tensor, items: torch.Tensor, k: int) -> torch.Tensor:
    """The top ``k`` indices [B, k] of the union of a top list (``val``, ``idx`` [B, k], from
    ``topk_scores`` with ``items`` excluded) and ``items`` [B, M] (-1 padding) scored ``score``
    [B, M]; ties to the lower index, as ``topk_scores``."""
    score = score.masked_fill(items < 0, float("-inf"))
    cand_s, cand_i = torch.cat([val, score], 1), torch.cat([idx, items], 1)
    big = int(cand_i.max()) + 1 if cand_i.numel() else 0
    by_index = torch.sort(torch.where(cand_i < 0, big, cand_i), stable=True).indices
    cand_s, cand_i = cand_s.gather(1, by_index), cand_i.gather(1, by_index)
    best = torch.sort(cand_s, descending=True, stable=True).indices[:, :k]
    return cand_i.gather(1, best)


def item_marks(items: torch.Tensor, first: torch.Tensor, rows: torch.Tensor, pos: torch.Tensor, n: int) -> torch.Tensor:
    """[len(rows), n] float: 1 at the catalog items of row ``rows[j]`` (of :func:`mentioned_items`'
    ``items``, ``first``) mentioned at or before position ``pos[j]``, else 0."""
    mark = (first[rows] <= pos[:, None]) & (items[rows] >= 0)
    out = torch.zeros(len(rows), n, device=items.device)
    r, c = mark.nonzero(as_tuple=True)
    out[r, items[rows][r, c]] = 1.0
    return out
