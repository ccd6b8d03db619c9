"""Torch-only row math shared by the reference and the Triton and CUDA launchers: masked
whitening statistics, each row's last valid position, the aggregation over rows of the PPO
losses' per-row partial sums [B, 5] = (loss, clip, lower clip, kl, tokens) in float64, GAE's
whitening / masking after the scan, and the fused LM head's vocabulary block."""

import torch


def select(m: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``x`` where the mask ``m`` is nonzero, else 0 (a select: a NaN outside the mask is dropped)."""
    return torch.where(m != 0, x, torch.zeros((), dtype=x.dtype, device=x.device))


def last_valid(mask: torch.Tensor) -> torch.Tensor:
    """Index of each row's last nonzero mask entry, -1 for an empty row (int64 [B])."""
    pos = torch.arange(mask.shape[1], device=mask.device)
    return torch.where(mask != 0, pos, torch.full_like(pos, -1)).max(dim=1).values


def whiten_stats(x: torch.Tensor, m: torch.Tensor, *, unbiased: bool, clamp_eps: bool) -> tuple[torch.Tensor, ...]:
    """(mean, rsqrt(var + 1e-8)) of ``x`` over ``m != 0`` (clamp_eps: rsqrt(max(var, 1e-8))), in
    float64 as the kernels accumulate them (float32 squares overflow from |x| ~ 2e19); an empty
    mask gives (0, 1)."""
    x64, keep = x.double(), m != 0
    n = keep.sum().double()
    if n == 0:
        return x64.new_zeros(()), x64.new_ones(())
    mean = select(keep, x64).sum() / n
    var = select(keep, (x64 - mean) ** 2).sum() / n
    if unbiased and n > 1:
        var = var * n / (n - 1)
    rstd = torch.rsqrt(var.clamp(min=1e-8)) if clamp_eps else torch.rsqrt(var + 1e-8)
    return mean, rstd


def standardize(x: torch.Tensor, m: torch.Tensor, *, unbiased: bool, clamp_eps: bool) -> torch.Tensor:
    """(x - mean) * rsqrt(var + 1e-8) over the mask (clamp_eps: rsqrt(max(var, 1e-8))), every
    element transformed, in ``x``'s dtype; an empty mask leaves ``x`` as it is (mean 0, rstd 1)."""
    mean, rstd = whiten_stats(x, m, unbiased=unbiased, clamp_eps=clamp_eps)
    return (x - mean.to(x.dtype)) * rstd.to(x.dtype)


def vocab_chunk(n_tokens: int) -> int:
    """The fused LM head's vocabulary block: about 4M scores per block (16 MiB in float32), 256
    to 8192 columns."""
    return max(256, min(8192, ((1 << 22) // max(n_tokens, 1)) // 128 * 128))


def finish_gae(adv: torch.Tensor, m: torch.Tensor, mode: str, whiten: bool, dtype: torch.dtype) -> torch.Tensor:
    """Raw scanned advantages -> the convention's output: whitened over the mask (unbiased; OpenRLHF
    biased with its clamp), TRL's zeroing on padding, in ``dtype``."""
    mf = (m != 0).to(adv.dtype)
    if whiten:
        adv = standardize(adv, mf, unbiased=mode != "openrlhf", clamp_eps=mode == "openrlhf")
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
