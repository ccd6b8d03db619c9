"""Pure-PyTorch reference of every op: the definition the kernels are tested against and the
``"torch"`` backend. Written for clarity, not speed. Math runs in ``compute`` dtype (float32 by
default, float64 for float64 inputs); results come back in the dtype each op documents.
Semantics: ``shared/docs/DESIGN.md`` ("The ops and their exact semantics").

Non-finite values follow one rule in every op (and every backend is tested against it): a value
at a position the mask excludes never reaches another position, an aggregate or a gradient
(masks select with ``where``, never multiply: ``NaN * 0`` is NaN), while a NaN or inf at an
included position propagates to what depends on it, as IEEE arithmetic does. Elementwise outputs
at an excluded position itself still follow their formula (whitening transforms every element;
GAE's returns are ``A + V`` everywhere, as verl and OpenRLHF define them). TRL's GAE convention
reads the rewards at every position (TRL masks only its values): its rewards are not excluded.
Ops documented as non-differentiable return tensors that do not require grad.
"""

from __future__ import annotations

import torch

from .. import _native
from .._native import KL_KINDS, acc_dtype
from ..kernels._rows import last_valid, standardize, whiten_stats
from ..kernels._rows import select as _where

AGG_MODES = tuple(_native.AGG_MODES)
GAE_MODES = tuple(_native.GAE_MODES)
__all__ = ["AGG_MODES", "GAE_MODES", "KL_KINDS", "acc_dtype", "last_valid", "standardize", "whiten_stats"]


def _cdt(x: torch.Tensor, compute: torch.dtype | None) -> torch.dtype:
    if compute is not None:
        return compute
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def clamp(x: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    """``min(max(x, lo), hi)`` as selects: NaN stays NaN and its gradient flows (torch.clamp's
    gradient is 0 at NaN, which would hide it), as in the kernels."""
    return torch.where(x < lo, lo, torch.where(x > hi, hi, x))


@torch.no_grad()
def gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    *,
    gamma: float,
    lam: float,
    mode: str = "verl",
    whiten: bool = True,
    compute: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """GAE by its definition, a Python loop over t: (advantages, returns) in the input dtype."""
    dt = _cdt(rewards, compute)
    r, v, m = rewards.to(dt), values.to(dt), mask.ne(0)
    B, T = r.shape
    if mode == "trl":
        pos = torch.arange(T, device=r.device)
        v = _where(pos[None, :] <= last_valid(m)[:, None], v)
    elif mode == "openrlhf":
        v, r = _where(m, v), _where(m, r)
    next_v = torch.zeros(B, dtype=dt, device=r.device)
    last_a = torch.zeros(B, dtype=dt, device=r.device)
    adv = torch.zeros_like(r)
    for t in reversed(range(T)):
        a_t = r[:, t] + gamma * next_v - v[:, t] + gamma * lam * last_a
        if mode == "verl":
            keep = m[:, t]
            next_v = torch.where(keep, v[:, t], next_v)
            last_a = torch.where(keep, a_t, last_a)
        else:
            next_v, last_a = v[:, t], a_t
        adv[:, t] = last_a
    ret = adv + v
    if whiten:
        adv = standardize(adv, m, unbiased=mode != "openrlhf", clamp_eps=mode == "openrlhf")
    if mode == "trl":
        adv = _where(m, adv)
    return adv.to(rewards.dtype), ret.to(rewards.dtype)


@torch.no_grad()
def masked_whiten(
    values: torch.Tensor,
    mask: torch.Tensor,
    *,
    shift_mean: bool = True,
    unbiased: bool = True,
    compute: torch.dtype | None = None,
) -> torch.Tensor:
    """(x - mean) * rsqrt(var + 1e-8) with mean and var over the mask; the mean re-added if not shift_mean."""
    dt = _cdt(values, compute)
    x = values.to(dt)
    mean, rstd = whiten_stats(x, mask, unbiased=unbiased, clamp_eps=False)
    out = (x - mean.to(dt)) * rstd.to(dt)
    return (out if shift_mean else out + mean.to(dt)).to(values.dtype)


@torch.no_grad()
def reinforce_returns(
    rewards: torch.Tensor, mask: torch.Tensor, *, gamma: float, compute: torch.dtype | None = None
) -> torch.Tensor:
    """G_t = m_t * r_t + gamma * G_{t+1}, G_T = 0."""
    dt = _cdt(rewards, compute)
    r = _where(mask, rewards.to(dt))
    g = torch.zeros(r.shape[0], dtype=dt, device=r.device)
    out = torch.zeros_like(r)
    for t in reversed(range(r.shape[1])):
        g = r[:, t] + gamma * g
        out[:, t] = g
    return out.to(rewards.dtype)


@torch.no_grad()
def group_advantages(
    scores: torch.Tensor,
    group_ids: torch.Tensor,
    *,
    mode: str = "grpo",
    eps: float = 1e-6,
    norm_by_std: bool = True,
    compute: torch.dtype | None = None,
) -> torch.Tensor:
    """GRPO: (s - mean_g) / (std_g + eps) (unbiased std; a singleton has mean 0, std 1);
    RLOO: s - mean of the others in the group = (s - mean_g) * n / (n - 1); a singleton keeps s."""
    dt = _cdt(scores, compute)
    s = scores.to(dt)
    out = torch.empty_like(s)
    for g in torch.unique(group_ids):
        idx = (group_ids == g).nonzero(as_tuple=True)[0]
        x = s[idx]
        n = x.numel()
        if mode == "grpo":
            mean = x.mean() if n > 1 else torch.zeros((), dtype=dt)
            std = x.std() if n > 1 else torch.ones((), dtype=dt)
            out[idx] = (x - mean) / (std + eps) if norm_by_std else x - mean
        else:
            out[idx] = x * n / (n - 1) - x.mean() * n / (n - 1) if n > 1 else x
    return out.to(scores.dtype)


def kl_penalty(
    logp: torch.Tensor,
    ref_logp: torch.Tensor,
    *,
    kind: str = "k1",
    clamp: float | None = None,
    compute: torch.dtype | None = None,
) -> torch.Tensor:
    """Per-token KL estimate of d = logp - ref_logp; "+" kinds: value of the kind, gradient of k2."""
    dt = _cdt(logp, compute)
    d = logp.to(dt) - ref_logp.to(dt)
    base = kind.rstrip("+")
    if base == "k1":
        val = d
    elif base == "abs":
        val = d.abs()
    elif base == "k2":
        val = 0.5 * d.square()
    else:
        x = torch.clamp(-d, min=-20, max=20)
        val = torch.clamp(torch.exp(x) - x - 1, min=-10, max=10)
    if clamp is not None:
        val = val.clamp(min=-clamp, max=clamp)
    if kind.endswith("+"):
        val = _StraightThrough.apply(val, d)
    return val.to(logp.dtype)


class _StraightThrough(torch.autograd.Function):
    """Value ``val``, gradient ``d`` (that of k2 = d^2 / 2): verl's straight-through KL. Written
    as a Function, not ``k2 - k2.detach() + val.detach()``, which is NaN for an infinite ``d``."""

    @staticmethod
    def forward(ctx, val, d):  # type: ignore[override]
        ctx.save_for_backward(d)
        return val.detach().clone()

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        (d,) = ctx.saved_tensors
        return None, grad * d


@torch.no_grad()
def token_rewards(
    scores: torch.Tensor,
    kl: torch.Tensor,
    mask: torch.Tensor,
    *,
    beta: float,
    clip: tuple[float, float] | None = None,
    compute: torch.dtype | None = None,
) -> torch.Tensor:
    """r_t = -beta * kl_t * m_t, plus the (clipped) score at the last token with m = 1."""
    dt = _cdt(kl, compute)
    m = mask.ne(0)
    r = _where(m, -beta * kl.to(dt))
    s = scores.to(dt)
    if clip is not None:
        s = s.clamp(min=clip[0], max=clip[1])
    last = last_valid(m)
    rows = (last >= 0).nonzero(as_tuple=True)[0]
    r[rows, last[rows]] += s[rows]
    return r.to(kl.dtype)


def aggregate(loss_mat: torch.Tensor, m: torch.Tensor, agg: str) -> torch.Tensor:
    """Aggregate a [B, T] loss over the mask; empty masks give 0 (still a function of the loss,
    with gradient 0)."""
    m = (m != 0).to(loss_mat.dtype)
    tokens_per_row = m.sum(dim=-1)
    rows = (tokens_per_row > 0).to(loss_mat.dtype).sum()
    row_sum = _where(m, loss_mat).sum(dim=-1)
    if agg == "token-mean":
        return row_sum.sum() / m.sum().clamp(min=1)
    if rows == 0:
        return row_sum.sum()
    if agg == "seq-mean-token-mean":
        return (row_sum / tokens_per_row.clamp(min=1)).sum() / rows
    loss = row_sum.sum() / rows
    return loss / loss_mat.shape[-1] if agg == "seq-mean-token-sum-norm" else loss


def _masked_mean(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    n = (m != 0).sum()
    return _where(m, x).sum() / n if n > 0 else x.new_zeros(())


def ppo_policy_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    dual_clip: float | None = None,
    agg: str = "token-mean",
    compute: torch.dtype | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped PPO policy loss (optionally dual-clipped) and its statistics."""
    dt = _cdt(logp, compute)
    m = mask.ne(0)
    lp, old, a = _where(m, logp.to(dt)), _where(m, old_logp.to(dt)), _where(m, advantages.to(dt))
    d = lp - old
    ratio = torch.exp(clamp(d, -20.0, 20.0))
    l1 = -a * ratio
    l2 = -a * clamp(ratio, 1 - clip_low, 1 + clip_high)
    c1 = torch.maximum(l1, l2)
    if dual_clip is not None:
        l3 = -a * dual_clip
        pg = torch.where(a < 0, torch.minimum(c1, l3), c1)
        lower = (c1 > l3) & (a < 0)
    else:
        pg = c1
        lower = torch.zeros_like(c1, dtype=torch.bool)
    out = acc_dtype(logp)
    loss = aggregate(pg, m, agg).to(out)
    stats = {
        "clipfrac": _masked_mean((l2 > l1).to(dt), m).detach().to(out),
        "clipfrac_lower": _masked_mean(lower.to(dt), m).detach().to(out),
        "approx_kl": _masked_mean(-d, m).detach().to(out),
    }
    return loss, stats


def ppo_value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip: float | None = 0.2,
    agg: str = "token-mean",
    compute: torch.dtype | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """0.5 * agg(max((v - R)^2, (clamp(v, v_old - eps, v_old + eps) - R)^2)) and the clip fraction."""
    dt = _cdt(values, compute)
    m = mask.ne(0)
    v, R = _where(m, values.to(dt)), _where(m, returns.to(dt))
    l1 = (v - R) ** 2
    if clip is None:  # old_values is not read
        l2 = l1
    else:
        old = _where(m, old_values.to(dt))
        vc = torch.max(torch.min(v, old + clip), old - clip)
        l2 = (vc - R) ** 2
    out = acc_dtype(values)
    loss = (0.5 * aggregate(torch.max(l1, l2), m, agg)).to(out)
    return loss, {"clipfrac": _masked_mean((l2 > l1).to(dt), m).detach().to(out)}


def token_logprobs(
    logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    temperature: float = 1.0,
    ignore_index: int = -100,
    compute: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(log softmax(z/tau)[y], entropy of softmax(z/tau)); ignored labels give 0 and 0.
    Terms with p = 0 (-inf logits) add 0 to the entropy; a row with no finite logit gives NaN.
    Float32 results (float64 for float64 logits)."""
    dt = _cdt(logits, compute)
    keep = labels != ignore_index
    z = _where(keep.unsqueeze(-1), logits.to(dt)) / temperature  # ignored rows are never read
    logp = torch.log_softmax(z, dim=-1)
    safe = torch.where(keep, labels, torch.zeros_like(labels)).long()
    lp = logp.gather(-1, safe.unsqueeze(-1)).squeeze(-1)
    p = logp.exp()
    ent = -(p * torch.where(p == 0, torch.zeros_like(logp), logp)).sum(-1)  # 0 log 0 = 0, grad 0 too
    out = acc_dtype(logits)
    zero = torch.zeros((), dtype=dt, device=z.device)
    return torch.where(keep, lp, zero).to(out), torch.where(keep, ent, zero).to(out)


def linear_logprobs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    *,
    temperature: float = 1.0,
    ignore_index: int = -100,
    compute: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """token_logprobs of the logits hidden @ weight.T, materialised (the unfused path)."""
    dt = _cdt(hidden, compute)
    keep = (labels != ignore_index).unsqueeze(-1)
    logits = _where(keep, hidden.to(dt)) @ weight.to(dt).T  # ignored rows are never read
    lp, ent = token_logprobs(logits, labels, temperature=temperature, ignore_index=ignore_index, compute=dt)
    out = acc_dtype(hidden)
    return lp.to(out), ent.to(out)


@torch.no_grad()
def topk_scores(
    queries: torch.Tensor,
    items: torch.Tensor,
    *,
    k: int,
    bias: torch.Tensor | None = None,
    exclude: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k of q @ E^T + bias per row, excluded items removed, ties by the lower index.
    Float32 scores; slots beyond the items left hold -inf and index -1."""
    s = queries.float() @ items.float().T
    if bias is not None:
        s = s + bias.float()
    banned = torch.isnan(s)
    if exclude is not None:
        check_exclude(exclude, items.shape[0])
        rows, cols = (exclude >= 0).nonzero(as_tuple=True)
        banned[rows, exclude[rows, cols].long()] = True
    s = s.masked_fill(banned, float("-inf"))
    # order: allowed items first (a valid -inf score still ranks), by score descending, then index
    order = torch.sort(s, dim=1, descending=True, stable=True).indices
    order = order.gather(1, torch.sort(banned.gather(1, order).to(torch.uint8), dim=1, stable=True).indices)
    idx = order[:, :k]
    vals, gone = s.gather(1, idx), banned.gather(1, idx)
    return vals.masked_fill(gone, float("-inf")), idx.masked_fill(gone, -1)


def check_exclude(exclude: torch.Tensor, n_items: int) -> None:
    """Raise ValueError unless every ``exclude`` entry is an item index in [0, n_items) or the
    padding -1 (reads data)."""
    bad = (exclude < -1) | (exclude >= n_items)
    if bool(bad.any()):
        raise ValueError(
            f"`exclude` entries must be item indices in [0, {n_items}) or -1 (padding); "
            f"found {exclude[bad][0].item()} ({int(bad.sum())} invalid)"
        )
