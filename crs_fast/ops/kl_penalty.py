"""Per-token KL penalty estimators with their gradient (the straight-through "+" kinds too)."""

import torch

from .. import _native
from .._native import _C, dtype_code, empty, nthreads, ptr, sentinel
from ..kernels import launcher
from . import _validate as V
from . import reference
from ._dispatch import call, call_autograd, check_backend_arg, eager_autograd, resolve_backend

KL_KINDS = _native.KL_KINDS


def _codes(kind: str, clamp: float | None) -> tuple[int, bool, float]:
    return _native.KL_BASE_KINDS[kind.rstrip("+")], kind.endswith("+"), sentinel(clamp)


@torch.library.custom_op("crs_fast::kl_penalty", mutates_args=())
def _kl_op(logp: torch.Tensor, ref_logp: torch.Tensor, kind: str, clamp: float | None, backend: str) -> torch.Tensor:
    a, b = logp.contiguous(), ref_logp.contiguous()
    k, straight, c = _codes(kind, clamp)
    if backend in ("triton", "cuda"):
        tk = launcher("kl_penalty", backend)
        return tk.kl_forward(a, b, k, straight, c)
    out = empty(a.shape, a)
    _C.kl_forward(dtype_code(a), ptr(a), ptr(b), ptr(out), a.numel(), k, straight, c, nthreads())
    return out


@_kl_op.register_fake
def _(logp, ref_logp, kind, clamp, backend):
    return empty(logp.shape, logp)


@torch.library.custom_op("crs_fast::kl_penalty_backward", mutates_args=())
def _kl_bwd_op(
    grad: torch.Tensor, logp: torch.Tensor, ref_logp: torch.Tensor, kind: str, clamp: float | None, backend: str
) -> torch.Tensor:
    g, a, b = grad.contiguous(), logp.contiguous(), ref_logp.contiguous()
    k, straight, c = _codes(kind, clamp)
    if backend in ("triton", "cuda"):
        tk = launcher("kl_penalty", backend)
        return tk.kl_backward(g, a, b, k, straight, c)
    out = empty(a.shape, a)
    _C.kl_backward(dtype_code(a), ptr(g), ptr(a), ptr(b), ptr(out), a.numel(), k, straight, c, nthreads())
    return out


@_kl_bwd_op.register_fake
def _(grad, logp, ref_logp, kind, clamp, backend):
    return empty(logp.shape, logp)


def _kl_setup(ctx, inputs, output):
    logp, ref_logp, kind, clamp, backend = inputs
    ctx.save_for_backward(logp, ref_logp)
    ctx.args = (kind, clamp, backend)


def _kl_backward(ctx, grad):
    logp, ref_logp = ctx.saved_tensors
    g = call(_kl_bwd_op, grad.to(logp.dtype), logp, ref_logp, *ctx.args)
    return g, -g, None, None, None


_kl_op.register_autograd(_kl_backward, setup_context=_kl_setup)
_EAGER_KL_OP = eager_autograd(_kl_op, _kl_setup, _kl_backward)


def kl_penalty(
    logp: torch.Tensor,
    ref_logp: torch.Tensor,
    *,
    kind: str = "k1",
    clamp: float | None = None,
    backend: str | None = None,
) -> torch.Tensor:
    """Per-token KL estimate of ``d = logp - ref_logp``, differentiable in both inputs.

    ``k1 = d``, ``abs = |d|``, ``k2 = d^2/2``, ``k3 = exp(-d) + d - 1`` (verl's form: its
    argument clamped to +-20, its value to +-10). ``clamp=c`` clamps every kind's value to
    [-c, c] (OpenRLHF uses 10). A "+" suffix keeps the value and takes the gradient of k2 (d),
    verl's straight-through estimator. The output has the input dtype.
    """
    V.tensor("logp", logp, floating=True)
    V.tensor("ref_logp", ref_logp, floating=True)
    V.same_shape("logp", logp, ref_logp=ref_logp)
    V.same_device("logp", logp, ref_logp=ref_logp)
    V.same_dtype("logp", logp, ref_logp=ref_logp)
    V.non_empty("logp", logp)
    V.choice("kind", kind, KL_KINDS)
    if clamp is not None:
        clamp = V.number("clamp", clamp, min_value=0.0)
    be = resolve_backend(check_backend_arg(backend), logp.device, "kl_penalty")
    if be == "torch":
        return reference.kl_penalty(logp, ref_logp, kind=kind, clamp=clamp)
    return call_autograd(_kl_op, _EAGER_KL_OP, logp, ref_logp, kind, clamp, be)
