"""Clipped PPO policy and value losses, fused: one pass for the loss and its statistics, one
for the gradient."""

import torch

from .. import _native
from .._native import _C, acc_dtype, as_mask, dtype_code, empty, nthreads, ptr, sentinel
from ..kernels import launcher
from ..kernels._rows import aggregate, grad_weights, params
from . import _validate as V
from . import reference
from ._dispatch import call, call_autograd, check_backend_arg, eager_autograd, resolve_backend

AGG_MODES = reference.AGG_MODES


def _scalar(value: float, like: torch.Tensor) -> torch.Tensor:
    return torch.tensor(value, dtype=acc_dtype(like), device=like.device)


def _gpu_forward(op: str, backend: str, policy: bool, x, y, z, m, agg: str, p: tuple) -> tuple[torch.Tensor, ...]:
    """A GPU backend's per-row partial sums, aggregated over rows in float64."""
    parts = launcher(op, backend).rows_forward(policy, x, y, z, m, *p)
    return tuple(_scalar(v, x) for v in aggregate(policy, parts, x.shape[1], agg))


def _gpu_backward(op: str, backend: str, policy: bool, grad: float, x, y, z, m, agg: str, p: tuple) -> torch.Tensor:
    """A GPU backend's gradient: per-token gradients times each row's weight in the aggregate."""
    return launcher(op, backend).rows_backward(policy, x, y, z, m, grad_weights(policy, grad, m, agg), *p)


def _differentiable(op, backward_op, n_tensors: int = 4):
    """Register ``backward_op`` (grad, the op's inputs) as the gradient of ``op``'s first output
    with respect to its first input; its other outputs (statistics) are not differentiable.
    Returns the eager autograd function for :func:`call_autograd`."""

    def setup(ctx, inputs, output):
        ctx.save_for_backward(*inputs[:n_tensors])
        ctx.args = inputs[n_tensors:]
        ctx.mark_non_differentiable(*output[1:])

    def backward(ctx, grad, *unused):
        g = call(backward_op, grad, *ctx.saved_tensors, *ctx.args)
        return (g,) + (None,) * (n_tensors - 1 + len(ctx.args))

    op.register_autograd(backward, setup_context=setup)
    return eager_autograd(op, setup, backward)


def _check_tensors(mask: torch.Tensor, **tensors: torch.Tensor) -> None:
    """Three float [B, T] tensors of one shape, dtype and device (the first names the errors), a
    mask of the same shape and device, nothing empty."""
    (first, t0), *rest = tensors.items()
    for name, t in tensors.items():
        V.tensor(name, t, ndim=2, floating=True)
    V.mask_tensor("mask", mask)
    others = dict(rest)
    V.same_shape(first, t0, **others, mask=mask)
    V.same_device(first, t0, **others, mask=mask)
    V.same_dtype(first, t0, **others)
    V.non_empty(first, t0)


@torch.library.custom_op("crs_fast::ppo_policy_loss", mutates_args=())
def _policy_op(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_low: float,
    clip_high: float,
    dual_clip: float | None,
    agg: str,
    backend: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    lp, old, adv, m = logp.contiguous(), old_logp.contiguous(), advantages.contiguous(), as_mask(mask)
    B, T = lp.shape
    if backend in ("triton", "cuda"):
        p = params(True, clip_low, clip_high, sentinel(dual_clip), -1.0)
        return _gpu_forward("ppo_policy_loss", backend, True, lp, old, adv, m, agg, p)
    loss, cf, cfl, kl = _C.policy_loss_forward(
        dtype_code(lp),
        ptr(lp),
        ptr(old),
        ptr(adv),
        ptr(m),
        B,
        T,
        clip_low,
        clip_high,
        sentinel(dual_clip),
        _native.AGG_MODES[agg],
        nthreads(),
    )
    return _scalar(loss, lp), _scalar(cf, lp), _scalar(cfl, lp), _scalar(kl, lp)


@_policy_op.register_fake
def _(logp, old_logp, advantages, mask, clip_low, clip_high, dual_clip, agg, backend):
    return tuple(empty((), logp, acc_dtype(logp)) for _ in range(4))


@torch.library.custom_op("crs_fast::ppo_policy_loss_backward", mutates_args=())
def _policy_bwd_op(
    grad: torch.Tensor,
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_low: float,
    clip_high: float,
    dual_clip: float | None,
    agg: str,
    backend: str,
) -> torch.Tensor:
    lp, old, adv, m = logp.contiguous(), old_logp.contiguous(), advantages.contiguous(), as_mask(mask)
    if backend in ("triton", "cuda"):
        p = params(True, clip_low, clip_high, sentinel(dual_clip), -1.0)
        return _gpu_backward("ppo_policy_loss", backend, True, float(grad), lp, old, adv, m, agg, p)
    out = empty(lp.shape, lp)
    B, T = lp.shape
    _C.policy_loss_backward(
        dtype_code(lp),
        float(grad),
        ptr(lp),
        ptr(old),
        ptr(adv),
        ptr(m),
        ptr(out),
        B,
        T,
        clip_low,
        clip_high,
        sentinel(dual_clip),
        _native.AGG_MODES[agg],
        nthreads(),
    )
    return out


@_policy_bwd_op.register_fake
def _(grad, logp, old_logp, advantages, mask, clip_low, clip_high, dual_clip, agg, backend):
    return empty(logp.shape, logp)


_EAGER_POLICY_OP = _differentiable(_policy_op, _policy_bwd_op)


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
    backend: str | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped PPO policy loss over [B, T] tokens -> (loss, stats); differentiable in ``logp``.

    ``ratio = exp(clamp(logp - old_logp, -20, 20))``, ``l1 = -A*ratio``,
    ``l2 = -A*clamp(ratio, 1 - clip_low, 1 + clip_high)``, per token ``max(l1, l2)``; with
    ``dual_clip = c > 1``, where ``A < 0``: ``min(max(l1, l2), -c*A)``. ``agg`` aggregates over
    the mask: "token-mean", "seq-mean-token-sum", "seq-mean-token-mean" or
    "seq-mean-token-sum-norm" (divided by T); an empty mask gives 0. ``stats``: "clipfrac"
    (fraction with ``l2 > l1``), "clipfrac_lower" (dual clip active) and "approx_kl"
    (``mean(old_logp - logp)``), all over the mask. Float32 results (float64 inputs: float64).
    """
    _check_tensors(mask, logp=logp, old_logp=old_logp, advantages=advantages)
    clip_low = V.number("clip_low", clip_low, min_value=0.0)
    clip_high = V.number("clip_high", clip_high, min_value=0.0)
    if clip_low > 1.0:
        raise ValueError(f"`clip_low` must be <= 1 (the ratio's lower bound is 1 - clip_low), got {clip_low}")
    if dual_clip is not None:
        dual_clip = V.number("dual_clip", dual_clip, min_value=1.0, strict=True)
    V.choice("agg", agg, AGG_MODES)
    be = resolve_backend(check_backend_arg(backend), logp.device, "ppo_policy_loss")
    if be == "torch":
        return reference.ppo_policy_loss(
            logp, old_logp, advantages, mask, clip_low=clip_low, clip_high=clip_high, dual_clip=dual_clip, agg=agg
        )
    loss, cf, cfl, kl = call_autograd(
        _policy_op, _EAGER_POLICY_OP, logp, old_logp, advantages, mask, clip_low, clip_high, dual_clip, agg, be
    )
    return loss, {"clipfrac": cf, "clipfrac_lower": cfl, "approx_kl": kl}


@torch.library.custom_op("crs_fast::ppo_value_loss", mutates_args=())
def _value_op(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    clip: float | None,
    agg: str,
    backend: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    v, old, ret, m = values.contiguous(), old_values.contiguous(), returns.contiguous(), as_mask(mask)
    B, T = v.shape
    if backend in ("triton", "cuda"):
        p = params(False, 0.0, 0.0, -1.0, sentinel(clip))
        return _gpu_forward("ppo_value_loss", backend, False, v, old, ret, m, agg, p)
    loss, cf = _C.value_loss_forward(
        dtype_code(v), ptr(v), ptr(old), ptr(ret), ptr(m), B, T, sentinel(clip), _native.AGG_MODES[agg], nthreads()
    )
    return _scalar(loss, v), _scalar(cf, v)


@_value_op.register_fake
def _(values, old_values, returns, mask, clip, agg, backend):
    return empty((), values, acc_dtype(values)), empty((), values, acc_dtype(values))


@torch.library.custom_op("crs_fast::ppo_value_loss_backward", mutates_args=())
def _value_bwd_op(
    grad: torch.Tensor,
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    clip: float | None,
    agg: str,
    backend: str,
) -> torch.Tensor:
    v, old, ret, m = values.contiguous(), old_values.contiguous(), returns.contiguous(), as_mask(mask)
    if backend in ("triton", "cuda"):
        p = params(False, 0.0, 0.0, -1.0, sentinel(clip))
        return _gpu_backward("ppo_value_loss", backend, False, float(grad), v, old, ret, m, agg, p)
    out = empty(v.shape, v)
    B, T = v.shape
    _C.value_loss_backward(
        dtype_code(v),
        float(grad),
        ptr(v),
        ptr(old),
        ptr(ret),
        ptr(m),
        ptr(out),
        B,
        T,
        sentinel(clip),
        _native.AGG_MODES[agg],
        nthreads(),
    )
    return out


@_value_bwd_op.register_fake
def _(grad, values, old_values, returns, mask, clip, agg, backend):
    return empty(values.shape, values)


_EAGER_VALUE_OP = _differentiable(_value_op, _value_bwd_op)


def ppo_value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip: float | None = 0.2,
    agg: str = "token-mean",
    backend: str | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped value loss ``0.5 * agg(max((v - R)^2, (v_c - R)^2))`` with
    ``v_c = clamp(v, v_old - clip, v_old + clip)`` (``clip=None``: unclipped, ``old_values`` not read) -> (loss, stats);
    differentiable in ``values``. ``stats["clipfrac"]``: fraction of masked tokens where the
    clipped term is larger. Aggregations as :func:`ppo_policy_loss`."""
    _check_tensors(mask, values=values, old_values=old_values, returns=returns)
    if clip is not None:
        clip = V.number("clip", clip, min_value=0.0)
    V.choice("agg", agg, AGG_MODES)
    be = resolve_backend(check_backend_arg(backend), values.device, "ppo_value_loss")
    if be == "torch":
        return reference.ppo_value_loss(values, old_values, returns, mask, clip=clip, agg=agg)
    loss, cf = call_autograd(_value_op, _EAGER_VALUE_OP, values, old_values, returns, mask, clip, agg, be)
    return loss, {"clipfrac": cf}
