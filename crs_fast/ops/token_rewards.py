"""Token-level rewards with the KL penalty, and the fixed and adaptive KL coefficient controllers."""

import math

import torch

from . import _validate as V
from . import reference
from ._lib import _C, as_mask, call, check_backend_arg, dtype_code, empty, gpu_kernels, nthreads, ptr, resolve_backend


@torch.library.custom_op("crs_fast::token_rewards", mutates_args=())
def _rewards_op(
    scores: torch.Tensor,
    kl: torch.Tensor,
    mask: torch.Tensor,
    beta: float,
    clip_lo: float,
    clip_hi: float,
    backend: str,
) -> torch.Tensor:
    s, k, m = scores.to(kl.dtype).contiguous(), kl.contiguous(), as_mask(mask)
    if backend in ("triton", "cuda"):
        tk = gpu_kernels(backend, "token_rewards")

        return tk.token_rewards(s, k, m, beta, clip_lo, clip_hi)
    out = empty(k.shape, k)
    _C.token_rewards(
        dtype_code(k), ptr(s), ptr(k), ptr(m), ptr(out), k.shape[0], k.shape[1], beta, clip_lo, clip_hi, nthreads()
    )
    return out


@_rewards_op.register_fake
def _(scores, kl, mask, beta, clip_lo, clip_hi, backend):
    return empty(kl.shape, kl)


def token_rewards(
    scores: torch.Tensor,
    kl: torch.Tensor,
    mask: torch.Tensor,
    *,
    beta: float,
    clip: float | tuple[float, float] | None = None,
    backend: str | None = None,
) -> torch.Tensor:
    """``r_t = -beta * kl_t * m_t`` over [B, T], plus the sequence score ``scores`` [B] (clipped
    to ``[-clip, clip]`` or ``[lo, hi]``) at each row's last token with ``m = 1``. Rows with no
    such token get no score. The output has ``kl``'s dtype."""
    V.tensor("scores", scores, ndim=1, floating=True)
    V.tensor("kl", kl, ndim=2, floating=True)
    V.mask_tensor("mask", mask)
    V.same_shape("kl", kl, mask=mask)
    V.same_device("kl", kl, scores=scores, mask=mask)
    if scores.shape[0] != kl.shape[0]:
        raise ValueError(f"`scores` has {scores.shape[0]} rows but `kl` has {kl.shape[0]}")
    V.non_empty("kl", kl)
    beta = V.number("beta", beta, min_value=0.0)
    if clip is None:
        lo, hi = float("-inf"), float("inf")
    elif isinstance(clip, (tuple, list)):
        if len(clip) != 2:
            raise ValueError(f"`clip` must be a number or a (low, high) pair, got {clip!r}")
        lo, hi = V.number("clip[0]", clip[0]), V.number("clip[1]", clip[1])
        if lo > hi:
            raise ValueError(f"`clip` must have low <= high, got {clip!r}")
    else:
        hi = V.number("clip", clip, min_value=0.0)
        lo = -hi
    be = resolve_backend(check_backend_arg(backend), kl.device, "token_rewards")
    if be == "torch":
        return reference.token_rewards(scores, kl, mask, beta=beta, clip=None if clip is None else (lo, hi))
    return call(_rewards_op, scores, kl, mask, beta, lo, hi, be)


class FixedKLController:
    """A constant KL coefficient ``value``."""

    def __init__(self, beta: float) -> None:
        self.value = V.number("beta", beta, min_value=0.0)

    def update(self, current_kl: float, n_steps: int) -> float:
        """No change; returns the coefficient."""
        return self.value


class AdaptiveKLController:
    """Ziegler et al.'s proportional controller:
    ``beta *= 1 + clip(kl / target - 1, -0.2, 0.2) * n_steps / horizon``."""

    def __init__(self, beta: float, target: float, horizon: float) -> None:
        self.value = V.number("beta", beta, min_value=0.0)
        self.target = V.number("target", target, min_value=0.0, strict=True)
        self.horizon = V.number("horizon", horizon, min_value=0.0, strict=True)

    def update(self, current_kl: float, n_steps: int) -> float:
        """Move the coefficient towards the KL target; returns the new coefficient.

        The step factor ``1 + error * n_steps / horizon`` is kept in [0.5, 2] (``n_steps`` larger
        than the horizon would otherwise flip beta's sign or blow it up), so beta stays positive
        and finite (a positive beta stays positive). A NaN or infinite ``current_kl`` raises
        ValueError and leaves beta unchanged.
        """
        kl = float(current_kl)
        if not math.isfinite(kl):
            raise ValueError(f"`current_kl` must be finite, got {kl} (beta stays {self.value})")
        if isinstance(n_steps, bool) or not isinstance(n_steps, int) or n_steps < 0:
            raise ValueError(f"`n_steps` must be a non-negative int, got {n_steps!r}")
        error = min(max(kl / self.target - 1.0, -0.2), 0.2)
        self.value *= min(max(1.0 + error * n_steps / self.horizon, 0.5), 2.0)
        return self.value
