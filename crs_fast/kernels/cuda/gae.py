"""GAE on CUDA (csrc/gae/gae_cuda.cu): one block per row, affine block scans over time tiles;
whitening then uses the reference's formula on the raw advantages."""

import torch

from ..._native import _C, GAE_MODES, acc_dtype, dtype_code, ptr
from .._rows import finish_gae, last_valid
from . import stream


def gae(
    r: torch.Tensor, v: torch.Tensor, m: torch.Tensor, gamma: float, lam: float, mode: str, whiten: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """(advantages, returns) in r's dtype; ``m`` uint8 [B, T], contiguous inputs."""
    B, T = r.shape
    adv = torch.empty(B, T, dtype=acc_dtype(r), device=r.device)
    ret = torch.empty_like(r)
    last = last_valid(m).contiguous()
    _C.cuda_gae_scan(
        dtype_code(r),
        ptr(r),
        ptr(v),
        ptr(m),
        ptr(last),
        ptr(adv),
        ptr(ret),
        B,
        T,
        gamma,
        gamma * lam,
        GAE_MODES[mode],
        stream(r),
    )
    return finish_gae(adv, m, mode, whiten, r.dtype), ret
