"""Items already in a context: where each is first mentioned, and a context bonus on a few items'
logits (the mention bonus, the people named) applied exactly on top of a fused LM head.

The policy's next-token logits with the mention bonus are ``z' = z + beta [i in S_t]`` (``S_t``
the items among the tokens up to ``t``); the people named add more (:mod:`~crs_fast.crs.rlhf.people`).
Over a vocabulary of ~57k tokens of which a context touches a handful, that is a row-specific
change no head column can carry; but the log-probabilities and the entropy of ``softmax(z')``
follow from those of ``softmax(z)`` (``linear_logprobs``' outputs, no ``[N, V]`` logits) and the
logits of the candidates alone (:func:`correct_logprobs`), and a ranking from a top-k of the
others plus the candidates' own scores (:func:`merge_topk`). :func:`step_bonus` turns bonus steps
(from position ``t`` on, item ``i`` gains ``w``) into per-row candidates and per-position bonuses.
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


def step_bonus(
    b: torch.Tensor, t: torch.Tensor, item: torch.Tensor, w: torch.Tensor, B: int, T: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(items [B, M], bonus [B, T, M]) from bonus steps (each [n]): from position ``t[j]`` on,
    row ``b[j]``'s catalog item ``item[j]`` gains ``w[j]``. ``items`` lists each row's distinct
    items (ascending, -1 padding, bonus 0 there), ``bonus[b, t, m] = sum_{j: b_j = b, item_j =
    items[b, m], t_j <= t} w_j``; differentiable in ``w``."""
    n = int(item.max()) + 1 if len(item) else 1
    uniq, inv = torch.unique(b * n + item, return_inverse=True)
    rb = uniq // n
    counts = torch.bincount(rb, minlength=B)
    m = int(counts.max()) if len(uniq) else 0
    slot = torch.arange(len(uniq), device=b.device) - (counts.cumsum(0) - counts)[rb]
    items = torch.full((B, m), -1, dtype=torch.int64, device=b.device)
    items[rb, slot] = uniq % n
    steps = torch.zeros(B, T, m, dtype=w.dtype, device=b.device).index_put((b, t, slot[inv]), w, accumulate=True)
    return items, steps.cumsum(1)


def correct_logprobs(
    lp: torch.Tensor,
    ent: torch.Tensor,
    z_label: torch.Tensor,
    z_items: torch.Tensor,
    bonus: torch.Tensor,
    bonus_label: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(lp', entropy') of ``softmax(z + c)`` from (``lp``, ``ent``) of ``softmax(z)`` (any shape
    ``[...]``), where ``c`` is zero but on a few distinct candidates: the label's logit ``z_label``
    [...], the candidates' logits ``z_items`` [..., M] and bonuses ``bonus`` [..., M] (0: none),
    ``bonus_label`` [...] the label's bonus. With ``u_i = z_i - log Z`` (``log Z = z_label - lp``),
    ``p_i = e^u_i`` and ``delta = log(1 + sum_i p_i expm1(c_i))``: ``lp' = lp + c_label - delta``
    and ``H' = delta + e^-delta (H - sum_i p_i (u_i expm1(c_i) + c_i e^c_i))``. fp32;
    differentiable in every input (``u`` is clamped at 0, so positions whose ``lp`` was never
    computed stay finite)."""
    log_z = z_label.float() - lp.float()
    c = bonus.float()
    u = (z_items.float() - log_z[..., None]).clamp(max=0.0)  # a log-prob; the clamp guards unscored positions
    p = u.exp()
    em1 = torch.expm1(c)
    delta = torch.log1p((p * em1).sum(-1))
    lp2 = lp.float() + bonus_label.float() - delta
    ent2 = delta + torch.exp(-delta) * (ent.float() - (p * (u * em1 + c * torch.exp(c))).sum(-1))
    return lp2, ent2


def policy_logprobs(policy, h, labels, lp, ent, temperature: float, found) -> tuple[torch.Tensor, torch.Tensor]:
    """A :class:`~crs_fast.crs.rlhf.policy.Policy`'s ``linear_logprobs`` outputs (lp, entropy)
    [B, T] without its context bonus (mentioned items, people named) turned into those with it
    (:func:`correct_logprobs`): ``h`` [B, T, H'] the states its head scored, ``labels`` [B, T] the
    next tokens, ``found = (items [B, M], bonus [B, T, M])`` its :meth:`context_bonus` of the
    inputs (the bonus after position ``t``), logits divided by ``temperature``."""
    if found[0].shape[1] == 0:
        return lp, ent
    items, bonus = found
    hf = h.float()
    z_y = (hf * head_rows(policy, labels).float()).sum(-1) / temperature
    z_items = torch.einsum("btd,bmd->btm", hf, rows_of(policy.item_rows().float(), items.clamp(min=0))) / temperature
    c = bonus.float() / temperature
    is_label = (policy.item_index[labels][..., None] == items[:, None, :]) & (items[:, None, :] >= 0)
    lp2, ent2 = correct_logprobs(lp, ent, z_y, z_items, c, (c * is_label).sum(-1))
    return lp2.to(lp.dtype), ent2.to(ent.dtype)


def ban_logprobs(
    policy, h, labels, lp, ent, temperature: float, found, ban: tuple[torch.Tensor, torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """(lp, entropy) [B, T] of the distribution the sampler drew from: ``softmax(z')`` (the context
    bonus ``found`` included, as :func:`policy_logprobs` gives ``lp``, ``ent``) with the tokens it
    banned removed and the rest renormalised. ``ban = (tokens [B, M], banned [B, T, M])``: each row's
    banned vocabulary ids (-1 padding) and whether each is banned after position ``t``. With
    ``u_j = z'_j - log Z'`` and ``s = sum_{j banned} e^u_j``: ``lp'' = lp - log(1 - s)`` and
    ``H'' = (H + sum_{j banned} e^u_j u_j) / (1 - s) + log(1 - s)``; where ``s > 1/2`` (``1 - s``
    cancels) from the materialised logits of those positions instead. fp32 inside, differentiable;
    a label that is banned at its position is an error (the sampler never draws one)."""
    tokens, banned = ban
    if tokens.ndim != 2 or tuple(banned.shape) != (*labels.shape, tokens.shape[1]) or banned.dtype != torch.bool:
        raise ValueError(
            f"token_ban: expected (tokens [B, M] int, banned [B, T, M] bool) with [B, T] = {list(labels.shape)}, "
            f"got tokens {list(tokens.shape)} and banned {list(banned.shape)} {banned.dtype}"
        )
    if tokens.shape[1] == 0 or not bool(banned.any()):
        return lp, ent
    banned = banned & (tokens >= 0)[:, None, :]
    if bool((banned & (tokens[:, None, :] == labels[..., None])).any()):
        raise ValueError("ban_logprobs: a label is banned at its position; the ban is not the sampler's")
    hf = h.float()
    z_y = (hf * head_rows(policy, labels).float()).sum(-1)
    z_b = torch.einsum("btd,bmd->btm", hf, head_rows(policy, tokens.clamp(min=0)).float())
    if found is not None and found[0].shape[1]:
        items, bonus = found
        tok_item = policy.item_index[tokens.clamp(min=0)].masked_fill(tokens < 0, -1)
        same = (tok_item[:, :, None] == items[:, None, :]) & (items[:, None, :] >= 0)  # [B, M, K]
        z_b = z_b + torch.einsum("btk,bmk->btm", bonus.float(), same.float())
        is_label = (policy.item_index[labels][..., None] == items[:, None, :]) & (items[:, None, :] >= 0)
        z_y = z_y + (bonus.float() * is_label).sum(-1)
    log_z = (z_y / temperature) - lp.float()
    u = (z_b / temperature - log_z[..., None]).clamp(max=0.0)  # log-probs; the clamp guards unscored positions
    p = torch.where(banned, u.exp(), torch.zeros_like(u))
    s = p.sum(-1)
    # 1 - s cancels where the banned tokens hold most of the mass: there, the materialised softmax
    hard = s > 0.5
    s = s.masked_fill(hard, 0.0)
    log_kept = torch.log1p(-s)
    lp2 = lp.float() - log_kept
    ent2 = (ent.float() + (p * u).sum(-1)) / (1.0 - s) + log_kept
    if bool(hard.any()):
        rows, pos = hard.nonzero(as_tuple=True)
        hr = hf[rows, pos]  # the head's logits there, without building the whole head: text rows, then item rows
        w = policy._token_head().float()
        z = (hr[:, : w.shape[1]] @ w.T).index_copy(1, policy.item_ids, hr @ policy.item_rows().float().T)
        if found is not None and found[0].shape[1]:
            extra = scatter_bonus(found[0][rows], found[1][rows, pos].float(), len(policy.item_ids))
            z = z.index_add(1, policy.item_ids, extra)
        mask = torch.zeros_like(z, dtype=torch.bool)
        r, m = banned[rows, pos].nonzero(as_tuple=True)
        mask[r, tokens[rows[r], m]] = True
        logq = torch.log_softmax((z / temperature).masked_fill(mask, float("-inf")), -1)
        lp2 = lp2.index_put((rows, pos), logq.gather(1, labels[rows, pos][:, None]).squeeze(1))
        ent2 = ent2.index_put((rows, pos), -(logq.exp() * logq.masked_fill(mask, 0.0)).sum(-1))
    return lp2.to(lp.dtype), ent2.to(ent.dtype)


def head_rows(policy, tokens: torch.Tensor) -> torch.Tensor:
    """``policy.head()[tokens]`` [..., H'] without building the head: a token's row, with zeros in
    the item columns, or its item's row of :meth:`~crs_fast.crs.rlhf.policy.Policy.item_rows`
    (same values, same gradients)."""
    rows = rows_of(policy._token_head(), tokens)
    if policy.item_bias is None and policy.item_attr is None:
        return rows
    if policy.item_bias is not None:
        rows = torch.cat([rows, rows.new_zeros(*rows.shape[:-1], policy.item_bias_dims())], -1)
    idx = policy.item_index[tokens]
    items = rows_of(policy.item_rows().to(rows.dtype), idx.clamp(min=0))
    return torch.where((idx >= 0)[..., None], items, rows)


def rows_of(weight: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``weight[index]`` [..., H] for ``weight`` [R, H] and integer ``index`` [...], with a
    deterministic gradient: the backward of advanced indexing accumulates repeated indices with
    ``index_put_(accumulate=True)``, whose CPU kernel adds them in a thread-dependent order (the
    same step gave gradients differing in the last bits from run to run); ``index_select``'s
    backward (``index_add_``) adds them in index order."""
    return torch.index_select(weight, 0, index.reshape(-1)).view(*index.shape, weight.shape[-1])


def scatter_bonus(items: torch.Tensor, bonus: torch.Tensor, n: int) -> torch.Tensor:
    """[R, n]: the bonuses ``bonus`` [R, M] of the catalog items ``items`` [R, M] (-1 padding)
    spread over the catalog (repeated items add); differentiable in ``bonus``."""
    out = torch.zeros(items.shape[0], n, dtype=bonus.dtype, device=bonus.device)
    return out.scatter_add(1, items.clamp(min=0), bonus * (items >= 0))


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
