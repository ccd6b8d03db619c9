"""KL penalty estimators on CUDA (csrc/kl/kl_cuda.cu)."""

import torch

from ..._native import _C, dtype_code, ptr
from . import stream


def kl_forward(lp: torch.Tensor, ref: torch.Tensor, kind: int, straight: bool, clamp: float) -> torch.Tensor:
    """Values of the estimator ``kind`` (0 k1, 1 abs, 2 k2, 3 k3); ``clamp`` < 0: none."""
    out = torch.empty_like(lp)
    _C.cuda_kl_forward(dtype_code(lp), ptr(lp), ptr(ref), ptr(out), lp.numel(), kind, straight, clamp, stream(lp))
    return out


def kl_backward(
    grad: torch.Tensor, lp: torch.Tensor, ref: torch.Tensor, kind: int, straight: bool, clamp: float
) -> torch.Tensor:
    """d/d lp of the estimator times ``grad``."""
    out = torch.empty_like(lp)
    g = grad.contiguous()
    _C.cuda_kl_backward(
        dtype_code(lp), ptr(g), ptr(lp), ptr(ref), ptr(out), lp.numel(), kind, straight, clamp, stream(lp)
    )
    return out
