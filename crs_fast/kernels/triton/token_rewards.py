"""Token rewards: ``-beta * kl * m`` plus the clipped score at each row's last valid token, over
flattened tokens (1-D grid)."""

import torch
import triton
import triton.language as tl

from .._rows import last_valid
from ._math import clamp

BLOCK = 1024


@triton.jit
def _rewards(s_ptr, kl_ptr, m_ptr, last_ptr, out_ptr, n, T, beta, lo, hi, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < n
    row = offs // T
    t = offs - row * T
    m = tl.load(m_ptr + offs, mask=ok, other=0) != 0
    kl = tl.load(kl_ptr + offs, mask=ok, other=0.0).to(tl.float32)
    r = tl.where(m, -beta * kl, 0.0)
    last = tl.load(last_ptr + row, mask=ok, other=-1)
    score = clamp(tl.load(s_ptr + row, mask=ok, other=0.0).to(tl.float32), lo, hi)
    r = tl.where(t == last, r + score, r)
    tl.store(out_ptr + offs, r.to(out_ptr.dtype.element_ty), mask=ok)


def token_rewards(
    scores: torch.Tensor, kl: torch.Tensor, m: torch.Tensor, beta: float, lo: float, hi: float
) -> torch.Tensor:
    """Rewards in kl's dtype; ``m`` uint8 [B, T], contiguous inputs."""
    B, T = kl.shape
    out = torch.empty_like(kl)
    n = B * T
    _rewards[(triton.cdiv(n, BLOCK),)](scores, kl, m, last_valid(m).contiguous(), out, n, T, beta, lo, hi, BLOCK=BLOCK)
    return out
