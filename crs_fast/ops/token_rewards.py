"""Token-level rewards: the sequence score on each row's last valid token minus beta times the per-token KL."""

import torch

from .._native import _C, as_mask, dtype_code, empty, nthreads, ptr
from ..kernels import launcher
from . import _validate as V
from . import reference
from ._dispatch import call, check_backend_arg, resolve_backend


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
        tk = launcher("token_rewards", backend)
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
