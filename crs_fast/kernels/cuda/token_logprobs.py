"""Token log-probs and entropy on CUDA (csrc/logprobs/logprobs_cuda.cu): one block per row,
online softmax statistics, no [N, V] buffer besides the gradient."""

import torch

from ..._native import _C, acc_dtype, dtype_code, ptr
from . import stream


def forward(z: torch.Tensor, y: torch.Tensor, inv_tau: float, ignore: int) -> tuple[torch.Tensor, ...]:
    """(lp, ent, lse) [N] in the accumulation dtype of logits z [N, V] (contiguous), labels y [N]."""
    N, V = z.shape
    lp, ent, lse = (torch.empty(N, dtype=acc_dtype(z), device=z.device) for _ in range(3))
    _C.cuda_logprobs_forward(
        dtype_code(z), ptr(z), ptr(y), ptr(lp), ptr(ent), ptr(lse), N, V, inv_tau, ignore, stream(z)
    )
    return lp, ent, lse


def backward(
    z: torch.Tensor,
    y: torch.Tensor,
    glp: torch.Tensor,
    gent: torch.Tensor | None,
    lse: torch.Tensor,
    ent: torch.Tensor,
    inv_tau: float,
    ignore: int,
) -> torch.Tensor:
    """d/dz of sum(glp * lp + gent * ent), in z's dtype."""
    N, V = z.shape
    acc = acc_dtype(z)
    glp, lse, ent = (t.reshape(-1).to(acc).contiguous() for t in (glp, lse, ent))
    gent = None if gent is None else gent.reshape(-1).to(acc).contiguous()
    out = torch.empty_like(z)
    _C.cuda_logprobs_backward(
        dtype_code(z),
        ptr(z),
        ptr(y),
        ptr(glp),
        ptr(gent),
        ptr(lse),
        ptr(ent),
        ptr(out),
        N,
        V,
        inv_tau,
        ignore,
        stream(z),
    )
    return out
