"""PPO policy and value losses on CUDA (csrc/ppo_loss/ppo_loss_cuda.cu): per-row partial sums and
the per-row weighted gradient; the same functions as crs_fast/kernels/triton/ppo_loss.py."""

import torch

from ..._native import _C, dtype_code, ptr
from . import stream


def rows_forward(
    policy: bool, x: torch.Tensor, y: torch.Tensor, z: torch.Tensor, m: torch.Tensor, p0: float, p1: float, p2: float
) -> torch.Tensor:
    """As :func:`crs_fast.kernels.triton.ppo_loss.rows_forward` (partial sums in float64)."""
    B, T = x.shape
    parts = torch.empty(B, 5, dtype=torch.float64, device=x.device)
    _C.cuda_loss_rows_forward(
        dtype_code(x), policy, ptr(x), ptr(y), ptr(z), ptr(m), ptr(parts), B, T, p0, p1, p2, stream(x)
    )
    return parts


def rows_backward(
    policy: bool,
    x: torch.Tensor,
    y: torch.Tensor,
    z: torch.Tensor,
    m: torch.Tensor,
    w: torch.Tensor,
    p0: float,
    p1: float,
    p2: float,
) -> torch.Tensor:
    """As :func:`crs_fast.kernels.triton.ppo_loss.rows_backward`."""
    B, T = x.shape
    out = torch.empty_like(x)
    w = w.contiguous()
    _C.cuda_loss_rows_backward(
        dtype_code(x), policy, ptr(x), ptr(y), ptr(z), ptr(m), ptr(w), ptr(out), B, T, p0, p1, p2, stream(x)
    )
    return out
