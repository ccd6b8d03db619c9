"""Advantage estimation: GAE (verl, TRL and OpenRLHF conventions), masked whitening,
REINFORCE returns and GRPO/RLOO group advantages. None of these carry gradients."""

import torch

from .. import _native
from .._native import _C, as_mask, dtype_code, empty, nthreads, ptr
from ..kernels import launcher
from . import _validate as V
from . import reference
from ._dispatch import call, check_backend_arg, resolve_backend


@torch.library.custom_op("crs_fast::gae", mutates_args=())
def _gae_op(
    rewards: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    gamma: float,
    lam: float,
    mode: str,
    whiten: bool,
    backend: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    r, v, m = rewards.contiguous(), values.contiguous(), as_mask(mask)
    if backend in ("triton", "cuda"):
        tk = launcher("gae", backend)
        return tk.gae(r, v, m, gamma, lam, mode, whiten)
    adv, ret = empty(r.shape, r), empty(r.shape, r)
    B, T = r.shape
    _C.gae(
        dtype_code(r),
        ptr(r),
        ptr(v),
        ptr(m),
        ptr(adv),
        ptr(ret),
        B,
        T,
        gamma,
        lam,
        _native.GAE_MODES[mode],
        whiten,
        nthreads(),
    )
    return adv, ret


@_gae_op.register_fake
def _(rewards, values, mask, gamma, lam, mode, whiten, backend):
    return empty(rewards.shape, rewards), empty(rewards.shape, rewards)


def gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    *,
    gamma: float = 1.0,
    lam: float = 1.0,
    mode: str = "verl",
    whiten: bool = True,
    backend: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over [B, T] tokens -> (advantages, returns).

    ``delta_t = r_t + gamma*V_{t+1} - V_t``, ``A_t = delta_t + gamma*lam*A_{t+1}``; ``mode``
    picks the published convention exactly: "verl" skips tokens with ``mask == 0`` inside the
    recursion (multi-turn observation tokens) and whitens with the unbiased variance; "trl"
    zeroes values past each row's last valid token, whitens, then zeroes advantages where
    ``mask == 0``; "openrlhf" multiplies values and rewards by the mask first and normalises
    with the biased variance and ``rsqrt(max(var, 1e-8))``. ``returns = A + V`` (the masked or
    zeroed V where the mode says so), taken before whitening. Outputs have the input dtype.
    """
    V.tensor("rewards", rewards, ndim=2, floating=True)
    V.tensor("values", values, ndim=2, floating=True)
    V.mask_tensor("mask", mask)
    V.same_shape("rewards", rewards, values=values, mask=mask)
    V.same_device("rewards", rewards, values=values, mask=mask)
    V.same_dtype("rewards", rewards, values=values)
    V.non_empty("rewards", rewards)
    gamma, lam = V.unit_interval("gamma", gamma), V.unit_interval("lam", lam)
    V.choice("mode", mode, tuple(_native.GAE_MODES))
    be = resolve_backend(check_backend_arg(backend), rewards.device, "gae")
    if be == "torch":
        return reference.gae(rewards, values, mask, gamma=gamma, lam=lam, mode=mode, whiten=bool(whiten))
    return call(_gae_op, rewards, values, mask, gamma, lam, mode, bool(whiten), be)


@torch.library.custom_op("crs_fast::masked_whiten", mutates_args=())
def _whiten_op(
    values: torch.Tensor, mask: torch.Tensor, shift_mean: bool, unbiased: bool, backend: str
) -> torch.Tensor:
    x, m = values.contiguous(), as_mask(mask)
    out = empty(x.shape, x)
    _C.masked_whiten(dtype_code(x), ptr(x), ptr(m), ptr(out), x.numel(), shift_mean, unbiased, nthreads())
    return out


@_whiten_op.register_fake
def _(values, mask, shift_mean, unbiased, backend):
    return empty(values.shape, values)


def masked_whiten(
    values: torch.Tensor,
    mask: torch.Tensor,
    *,
    shift_mean: bool = True,
    unbiased: bool = True,
    backend: str | None = None,
) -> torch.Tensor:
    """``(x - mean) * rsqrt(var + 1e-8)`` with mean and variance over ``mask != 0`` (unbiased by
    default, as verl); every element is transformed; with ``shift_mean=False`` the mean is added
    back. An all-zero mask returns the input unchanged."""
    V.tensor("values", values, floating=True)
    V.mask_tensor("mask", mask)
    V.same_shape("values", values, mask=mask)
    V.same_device("values", values, mask=mask)
    V.non_empty("values", values)
    be = resolve_backend(check_backend_arg(backend), values.device, "masked_whiten")
    if be == "torch":
        return reference.masked_whiten(values, mask, shift_mean=bool(shift_mean), unbiased=bool(unbiased))
    return call(_whiten_op, values, mask, bool(shift_mean), bool(unbiased), be)


@torch.library.custom_op("crs_fast::reinforce_returns", mutates_args=())
def _reinforce_op(rewards: torch.Tensor, mask: torch.Tensor, gamma: float, backend: str) -> torch.Tensor:
    r, m = rewards.contiguous(), as_mask(mask)
    out = empty(r.shape, r)
    _C.reinforce_returns(dtype_code(r), ptr(r), ptr(m), ptr(out), r.shape[0], r.shape[1], gamma, nthreads())
    return out


@_reinforce_op.register_fake
def _(rewards, mask, gamma, backend):
    return empty(rewards.shape, rewards)


def reinforce_returns(
    rewards: torch.Tensor, mask: torch.Tensor, *, gamma: float = 1.0, backend: str | None = None
) -> torch.Tensor:
    """Discounted returns ``G_t = m_t*r_t + gamma*G_{t+1}`` over [B, T] (OpenRLHF's REINFORCE)."""
    V.tensor("rewards", rewards, ndim=2, floating=True)
    V.mask_tensor("mask", mask)
    V.same_shape("rewards", rewards, mask=mask)
    V.same_device("rewards", rewards, mask=mask)
    V.non_empty("rewards", rewards)
    gamma = V.unit_interval("gamma", gamma)
    be = resolve_backend(check_backend_arg(backend), rewards.device, "reinforce_returns")
    if be == "torch":
        return reference.reinforce_returns(rewards, mask, gamma=gamma)
    return call(_reinforce_op, rewards, mask, gamma, be)


@torch.library.custom_op("crs_fast::group_advantages", mutates_args=())
def _group_op(
    scores: torch.Tensor, group_ids: torch.Tensor, mode: str, eps: float, norm_by_std: bool, backend: str
) -> torch.Tensor:
    s, g = scores.contiguous(), group_ids.to(torch.int64).contiguous()
    out = empty(s.shape, s)
    _C.group_advantages(dtype_code(s), ptr(s), ptr(g), ptr(out), s.numel(), _native.GROUP_MODES[mode], eps, norm_by_std)
    return out


@_group_op.register_fake
def _(scores, group_ids, mode, eps, norm_by_std, backend):
    return empty(scores.shape, scores)


def group_advantages(
    scores: torch.Tensor,
    group_ids: torch.Tensor,
    *,
    mode: str = "grpo",
    eps: float = 1e-6,
    norm_by_std: bool = True,
    mask: torch.Tensor | None = None,
    backend: str | None = None,
) -> torch.Tensor:
    """Outcome advantages of sequence ``scores`` [B] within groups of equal ``group_ids`` [B].

    "grpo": ``(s - mean_g) / (std_g + eps)`` (unbiased std; without ``norm_by_std`` only the mean
    is removed; a singleton group has mean 0 and std 1, as verl). "rloo": ``s`` minus the mean of
    the other members, ``(s - mean_g) * n/(n-1)``; a singleton keeps ``s``. With ``mask`` [B, T]
    the result is broadcast to tokens: ``adv[:, None] * mask``.
    """
    V.tensor("scores", scores, ndim=1, floating=True)
    V.tensor("group_ids", group_ids, ndim=1, integer=True)
    V.same_shape("scores", scores, group_ids=group_ids)
    V.same_device("scores", scores, group_ids=group_ids, mask=mask)
    V.non_empty("scores", scores)
    V.choice("mode", mode, tuple(_native.GROUP_MODES))
    eps = V.number("eps", eps, min_value=0.0)
    if mask is not None:
        V.mask_tensor("mask", mask)
        if mask.dim() != 2 or mask.shape[0] != scores.shape[0]:
            raise ValueError(f"`mask` must have shape [B, T] with B = {scores.shape[0]}, got {list(mask.shape)}")
    be = resolve_backend(check_backend_arg(backend), scores.device, "group_advantages")
    if be == "torch":
        adv = reference.group_advantages(scores, group_ids, mode=mode, eps=eps, norm_by_std=bool(norm_by_std))
    else:
        adv = call(_group_op, scores, group_ids, mode, eps, bool(norm_by_std), be)
    if mask is None:
        return adv
    return torch.where(mask.ne(0), adv.unsqueeze(-1), torch.zeros((), dtype=adv.dtype, device=adv.device))


__all__ = ["gae", "group_advantages", "masked_whiten", "reinforce_returns"]
