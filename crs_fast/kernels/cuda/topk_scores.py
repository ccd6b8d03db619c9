"""Top-k scoring on CUDA: item blocks are scored by a library GEMM (cuBLAS through torch) into a
[B, chunk] buffer and folded into the running top-k by csrc/topk/topk_cuda.cu."""

import torch

from ..._native import _C, ptr
from . import stream

MAX_K = 1024


def default_chunk(n_queries: int) -> int:
    """Items per block: about 32M scores (128 MiB), 1024 to 65536 items."""
    return max(1024, min(65536, ((1 << 25) // max(n_queries, 1)) // 1024 * 1024))


def topk(
    q: torch.Tensor,
    items: torch.Tensor,
    k: int,
    bias: torch.Tensor | None,
    exclude: torch.Tensor | None,
    chunk: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(values float32 [B, k], indices int64 [B, k]) as :func:`crs_fast.topk_scores`."""
    if k > MAX_K:
        raise ValueError(f"the CUDA top-k keeps at most {MAX_K} items per row, got k = {k}")
    B = q.shape[0]
    N = items.shape[0]
    qq = q.float().contiguous()
    vals = torch.full((B, k), float("-inf"), dtype=torch.float32, device=q.device)
    idx = torch.full((B, k), -1, dtype=torch.int64, device=q.device)
    b = None if bias is None else bias.float().contiguous()
    ex, m = None, 0
    if exclude is not None and exclude.shape[1] > 0:
        ex, m = torch.sort(exclude.to(torch.int64), dim=1).values.contiguous(), exclude.shape[1]
    chunk = min(chunk or default_chunk(B), N)
    buf = torch.empty(B * chunk, dtype=torch.float32, device=q.device)
    st = stream(q)
    for v0 in range(0, N, chunk):
        c = min(chunk, N - v0)
        s = buf[: B * c].view(B, c)
        torch.mm(qq, items[v0 : v0 + c].float().T, out=s)  # float32 scores, as the reference ranks them
        _C.cuda_topk_block_merge(ptr(s), c, ptr(b), ptr(ex), m, ptr(vals), ptr(idx), B, c, v0, k, st)
    return vals, idx
