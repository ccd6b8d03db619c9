"""PPO policy and value losses on CUDA (csrc/ppo_loss/ppo_loss_cuda.cu): per-row partial sums,
aggregated over rows in float64 here (crs_fast/kernels/_rows.py, shared with Triton)."""

import torch

from ...ops._lib import _C, dtype_code, ptr
from .._rows import aggregate, grad_weights, params
from . import stream


def losses_forward(
    policy: bool,
    x: torch.Tensor,
    y: torch.Tensor,
    z: torch.Tensor,
    m: torch.Tensor,
    agg: str,
    lo: float = 0.0,
    hi: float = 0.0,
    dual: float = -1.0,
    eps: float = -1.0,
) -> tuple[float, ...]:
    """As :func:`crs_fast.kernels.triton.ppo_loss.losses_forward`."""
    B, T = x.shape
    parts = torch.empty(B, 5, dtype=torch.float64, device=x.device)
    _C.cuda_loss_rows_forward(
        dtype_code(x),
        policy,
        ptr(x),
        ptr(y),
        ptr(z),
        ptr(m),
        ptr(parts),
        B,
        T,
        *params(policy, lo, hi, dual, eps),
        stream(x),
    )
    return aggregate(policy, parts, T, agg)


def losses_backward(
    policy: bool,
    grad: float,
    x: torch.Tensor,
    y: torch.Tensor,
    z: torch.Tensor,
    m: torch.Tensor,
    agg: str,
    lo: float = 0.0,
    hi: float = 0.0,
    dual: float = -1.0,
    eps: float = -1.0,
) -> torch.Tensor:
    """Gradient of the policy loss w.r.t. lp, or of the value loss w.r.t. v."""
    B, T = x.shape
    w = grad_weights(policy, grad, m, agg).contiguous()
    out = torch.empty_like(x)
    _C.cuda_loss_rows_backward(
        dtype_code(x),
        policy,
        ptr(x),
        ptr(y),
        ptr(z),
        ptr(m),
        ptr(w),
        ptr(out),
        B,
        T,
        *params(policy, lo, hi, dual, eps),
        stream(x),
    )
    return out
