"""KL penalty estimators, forward and gradient, elementwise over flattened tokens."""

import torch
import triton
import triton.language as tl

from ._math import clamp as _clamp

BLOCK = 1024


@triton.jit
def _kl_point(d, KIND: tl.constexpr, STRAIGHT: tl.constexpr, clamp):
    if KIND == 0:
        v = d
        g = tl.full(d.shape, 1.0, tl.float32)
    elif KIND == 1:
        v = tl.abs(d)
        g = tl.where(d > 0, 1.0, tl.where(d < 0, -1.0, 0.0))
    elif KIND == 2:
        v = 0.5 * d * d
        g = d
    else:  # k3 with verl's clamps
        x = -d
        xc = _clamp(x, -20.0, 20.0)
        e = tl.exp(xc)
        k = e - xc - 1.0
        v = _clamp(k, -10.0, 10.0)
        inside = (x >= -20.0) & (x <= 20.0) & (k >= -10.0) & (k <= 10.0)
        g = tl.where(inside, 1.0 - e, 0.0)
    g = tl.where(((v >= -clamp) & (v <= clamp)) | (clamp == float("inf")), g, g * 0.0)  # as torch: 0 * inf is NaN
    v = _clamp(v, -clamp, clamp)
    if STRAIGHT:
        g = d
    return v, g


@triton.jit
def _kl_fwd(lp_ptr, ref_ptr, out_ptr, n, clamp, KIND: tl.constexpr, STRAIGHT: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = offs < n
    d = tl.load(lp_ptr + offs, mask=m, other=0.0).to(tl.float32) - tl.load(ref_ptr + offs, mask=m, other=0.0).to(
        tl.float32
    )
    v, g = _kl_point(d, KIND, STRAIGHT, clamp)
    tl.store(out_ptr + offs, v.to(out_ptr.dtype.element_ty), mask=m)


@triton.jit
def _kl_bwd(
    grad_ptr, lp_ptr, ref_ptr, out_ptr, n, clamp, KIND: tl.constexpr, STRAIGHT: tl.constexpr, BLOCK: tl.constexpr
):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = offs < n
    d = tl.load(lp_ptr + offs, mask=m, other=0.0).to(tl.float32) - tl.load(ref_ptr + offs, mask=m, other=0.0).to(
        tl.float32
    )
    v, g = _kl_point(d, KIND, STRAIGHT, clamp)
    up = tl.load(grad_ptr + offs, mask=m, other=0.0).to(tl.float32)
    tl.store(out_ptr + offs, (up * g).to(out_ptr.dtype.element_ty), mask=m)


def _grid(n: int) -> tuple[int]:
    return (triton.cdiv(n, BLOCK),)


def kl_forward(lp: torch.Tensor, ref: torch.Tensor, kind: int, straight: bool, clamp: float) -> torch.Tensor:
    """Values of the estimator ``kind`` (0 k1, 1 abs, 2 k2, 3 k3); ``clamp`` < 0: none."""
    out = torch.empty_like(lp)
    n = lp.numel()
    # the value does not depend on STRAIGHT: one compiled variant per kind, not two
    _kl_fwd[_grid(n)](lp, ref, out, n, float("inf") if clamp < 0 else clamp, KIND=kind, STRAIGHT=False, BLOCK=BLOCK)
    return out


def kl_backward(
    grad: torch.Tensor, lp: torch.Tensor, ref: torch.Tensor, kind: int, straight: bool, clamp: float
) -> torch.Tensor:
    """d/d lp of the estimator times ``grad``."""
    out = torch.empty_like(lp)
    n = lp.numel()
    # the straight-through gradient is d whatever the kind: one compiled variant for all of them
    _kl_bwd[_grid(n)](
        grad,
        lp,
        ref,
        out,
        n,
        float("inf") if clamp < 0 else clamp,
        KIND=0 if straight else kind,
        STRAIGHT=straight,
        BLOCK=BLOCK,
    )
    return out
