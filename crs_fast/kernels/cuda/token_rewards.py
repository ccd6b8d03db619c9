"""Token rewards on CUDA (csrc/token_rewards/token_rewards_cuda.cu)."""

import torch

from ..._native import _C, dtype_code, ptr
from .._rows import last_valid
from . import stream


def token_rewards(
    scores: torch.Tensor, kl: torch.Tensor, m: torch.Tensor, beta: float, lo: float, hi: float
) -> torch.Tensor:
    """Rewards in kl's dtype; ``m`` uint8 [B, T], contiguous inputs."""
    B, T = kl.shape
    out = torch.empty_like(kl)
    last = last_valid(m).contiguous()
    _C.cuda_token_rewards(
        dtype_code(kl), ptr(scores), ptr(kl), ptr(m), ptr(last), ptr(out), B, T, beta, lo, hi, stream(kl)
    )
    return out
