"""Top-k scoring: a tiled GEMM (queries x item tiles, ``tl.dot``) whose epilogue keeps a running
top-k per query row in registers. Scores and indices travel together as one int64 key,
``(ordered float32 bits) << 32 | (2^32 - 1 - index)``, so a single ``tl.topk`` ranks by score
descending and breaks ties by the lower index. The item axis is split over SPLITS programs per
row block (parallelism at small B); their [SPLITS, B, KP] keys are merged at the end, so extra
memory is O(B * k)."""

import torch
import triton
import triton.language as tl

from . import sm_count, split_axis

# The running top-k lives in registers: [BLOCK_M, next_pow2(k)] int64, sorted by bitonic networks
# that Triton unrolls. Their size sets the compile time of a first call: at k <= 64 with 32 rows
# and 8 warps (8 keys a thread per tile) every variant compiles in under 10 s for sm_80 or sm_90
# on a 2-core CPU; 64 rows and 4 warps took 30-80 s at k = 64 and minutes at k = 256 (ptxas).
# Larger k runs on the CUDA C++ backend (k <= 1024) or the reference.
MAX_K = 64
EMPTY_KEY = -(2**63)  # key of an empty slot / excluded or NaN score
_EMPTY: tl.constexpr = tl.constexpr(EMPTY_KEY)  # kernels read module globals only as constexprs


@triton.jit
def _keys(s, cols):
    """int64 keys of float32 scores s and int64 indices cols (same shape)."""
    bits = s.to(tl.int32, bitcast=True)
    ordered = tl.where(bits >= 0, bits, bits ^ 0x7FFFFFFF)
    return (ordered.to(tl.int64) << 32) | (0xFFFFFFFF - cols)


@triton.jit
def _topk_kernel(
    q_ptr,
    e_ptr,
    bias_ptr,
    ex_ptr,
    out_ptr,
    B,
    N,
    D,
    M_EX,
    items_per_split,
    IEEE: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    KP: tl.constexpr,
):
    pid_m = tl.program_id(0)
    split = tl.program_id(1)
    rows = pid_m.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < B
    lo = split.to(tl.int64) * items_per_split
    hi = tl.minimum(lo + items_per_split, N)
    run = tl.full((BLOCK_M, KP), _EMPTY, tl.int64)
    for n0 in range(lo, hi, BLOCK_N):
        cols = n0 + tl.arange(0, BLOCK_N).to(tl.int64)
        col_ok = cols < hi
        acc = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
        for d0 in range(0, D, BLOCK_D):
            dd = d0 + tl.arange(0, BLOCK_D)
            q = tl.load(q_ptr + rows[:, None] * D + dd[None, :], mask=row_ok[:, None] & (dd[None, :] < D), other=0.0)
            e = tl.load(e_ptr + cols[:, None] * D + dd[None, :], mask=col_ok[:, None] & (dd[None, :] < D), other=0.0)
            if IEEE:
                acc += tl.dot(q, tl.trans(e), input_precision="ieee")
            else:
                acc += tl.dot(q, tl.trans(e))
        acc += tl.load(bias_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
        banned = (acc != acc) | (~col_ok[None, :])
        for j in range(0, M_EX):
            x = tl.load(ex_ptr + rows * M_EX + j, mask=row_ok, other=-1)
            banned = banned | (cols[None, :] == x[:, None])
        keys = tl.where(banned, _EMPTY, _keys(acc, cols[None, :] + tl.zeros((BLOCK_M, BLOCK_N), tl.int64)))
        best = tl.topk(keys, KP, dim=1)
        run = tl.topk(tl.reshape(tl.join(run, best), (BLOCK_M, 2 * KP)), KP, dim=1)
    kk = tl.arange(0, KP)
    base = split.to(tl.int64) * B * KP
    tl.store(out_ptr + base + rows[:, None] * KP + kk[None, :], run, mask=row_ok[:, None])


def _decode(keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    empty = keys == EMPTY_KEY
    k32 = (keys >> 32).to(torch.int32)
    bits = torch.where(k32 >= 0, k32, k32 ^ 0x7FFFFFFF)
    vals = bits.view(torch.float32).masked_fill(empty, float("-inf"))
    idx = (0xFFFFFFFF - (keys & 0xFFFFFFFF)).masked_fill(empty, -1)
    return vals, idx


def topk(
    q: torch.Tensor, items: torch.Tensor, k: int, bias: torch.Tensor | None, exclude: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(values float32 [B, k], indices int64 [B, k]) as :func:`crs_fast.topk_scores`.
    ``exclude``: int64 [B, m] (-1 padding) or None; k <= MAX_K."""
    if k > MAX_K:
        raise ValueError(f"the Triton top-k keeps at most {MAX_K} items per row, got k = {k}")
    B, D = q.shape
    N = items.shape[0]
    if q.dtype != items.dtype or q.dtype == torch.float64:  # scores are float32, as the reference's
        q, items = q.float(), items.float()  # (float64 also did not compile: tl.dot's fp32 accumulator)
    q, items = q.contiguous(), items.contiguous()
    kp = max(16, triton.next_power_of_2(k))
    block_n = max(64, kp)
    block_m = 16 if q.device.type == "cpu" else 32  # see MAX_K
    # one BLOCK_D on a GPU (fewer variants to compile); the interpreter's small tiles keep it cheap
    block_d = (32 if D <= 32 else 64) if q.device.type == "cpu" else 64
    row_blocks = triton.cdiv(B, block_m)
    splits, per_split = split_axis(N, block_n, triton.cdiv(2 * sm_count(q.device), row_blocks), cap=64)
    out = torch.empty(splits, B, kp, dtype=torch.int64, device=q.device)
    ex = exclude.to(torch.int64).contiguous() if exclude is not None and exclude.shape[1] > 0 else None
    _topk_kernel[(row_blocks, splits)](
        q,
        items,
        # no bias: zeros (one variant to compile instead of two; an N-float read beside the
        # N x D item tile; adding +0.0 also makes a -0.0 score rank as 0.0, as the reference does)
        torch.zeros(N, dtype=torch.float32, device=q.device) if bias is None else bias.float().contiguous(),
        out if ex is None else ex,
        out,
        B,
        N,
        D,
        0 if ex is None else ex.shape[1],
        per_split,
        IEEE=q.dtype == torch.float32,
        BLOCK_M=block_m,
        BLOCK_N=block_n,
        BLOCK_D=block_d,
        KP=kp,
        num_warps=4 if q.device.type == "cpu" else 8,  # see MAX_K
    )
    keys = out.permute(1, 0, 2).reshape(B, splits * kp)
    keys = keys.topk(k, dim=1).values if splits * kp > k else keys[:, :k]
    return _decode(keys)
