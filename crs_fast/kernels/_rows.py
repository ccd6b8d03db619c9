"""Torch-only helpers shared by the Triton and CUDA launchers: the aggregation over rows of the
PPO losses' per-row partial sums [B, 5] = (loss, clip, lower clip, kl, tokens), in float64, and
GAE's whitening / masking after the scan."""

import torch

from ..ops import reference


def finish_gae(adv: torch.Tensor, m: torch.Tensor, mode: str, whiten: bool, dtype: torch.dtype) -> torch.Tensor:
    """Raw scanned advantages -> the convention's output: whitened over the mask (unbiased; OpenRLHF
    biased with its clamp), TRL's zeroing on padding, in ``dtype``."""
    mf = (m != 0).to(adv.dtype)
    if whiten:
        adv = reference.standardize(adv, mf, unbiased=mode != "openrlhf", clamp_eps=mode == "openrlhf")
    if mode == "trl":
        adv = torch.where(m != 0, adv, 0.0)
    return adv.to(dtype)


def weights(counts: torch.Tensor, T: int, agg: str) -> torch.Tensor:
    """Each row's token weight in the aggregated loss (float64, [B]) for ``agg``."""
    c = counts.double()
    rows = (c > 0).sum()
    if agg == "token-mean":
        n = c.sum()
        return torch.where(n > 0, 1.0 / n.clamp(min=1), 0.0).expand_as(c).clone()
    if agg == "seq-mean-token-mean":
        return torch.where((c > 0) & (rows > 0), 1.0 / (c.clamp(min=1) * rows.clamp(min=1)), 0.0)
    w = torch.where(rows > 0, 1.0 / rows.clamp(min=1), 0.0).expand_as(c).clone()
    return w / T if agg == "seq-mean-token-sum-norm" else w


def params(policy: bool, lo: float, hi: float, dual: float, eps: float) -> tuple[float, float, float]:
    """Kernel parameters: (clip_low, clip_high, dual_clip) or (value clip or inf, 0, 0)."""
    if policy:
        return lo, hi, dual
    return (float("inf") if eps < 0 else eps), 0.0, 0.0


def aggregate(policy: bool, parts: torch.Tensor, T: int, agg: str) -> tuple[float, ...]:
    """(loss, clipfrac, clipfrac_lower, approx_kl) or (loss, clipfrac) from the row partials."""
    p = parts.double()
    counts = p[:, 4]
    loss = float((p[:, 0] * weights(counts, T, agg)).sum())
    denom = max(float(counts.sum()), 1.0)
    if policy:
        return loss, float(p[:, 1].sum()) / denom, float(p[:, 2].sum()) / denom, float(p[:, 3].sum()) / denom
    return 0.5 * loss, float(p[:, 1].sum()) / denom


def grad_weights(policy: bool, grad: float, m: torch.Tensor, agg: str) -> torch.Tensor:
    """float32 [B]: d loss / d (row's per-token loss), times the incoming gradient."""
    return (weights(m.ne(0).sum(dim=1), m.shape[1], agg) * (grad if policy else 0.5 * grad)).float()
