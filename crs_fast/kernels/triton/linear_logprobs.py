"""The fused LM head: log-probs and entropy of ``hidden @ weight.T / tau`` without [N, V] logits.

Forward: a block GEMM (``tl.dot`` over the hidden size) whose epilogue keeps per-row online-softmax
statistics (running max m, sum of exponentials s, and w = sum exp(x - m) * (x - m)) across the
vocabulary tiles of one slice; the vocabulary is split into SPLITS slices so that small token
counts still fill the GPU, and the [SPLITS, N] partial statistics are combined at the end.

Backward: for each vocabulary chunk, a block GEMM recomputes the logits and its epilogue writes
their gradient ``g_z = inv_tau * (g_lp * (onehot - p) - g_ent * p * (log p + H))`` into an [N, chunk]
buffer, from which two library GEMMs accumulate ``d hidden`` and write ``d weight``: extra
memory O(N * chunk), never [N, V]. Offsets are int64.
"""

import torch
import triton
import triton.language as tl

from .._rows import vocab_chunk
from . import sm_count, split_axis
from ._math import exp_from, xlogx_term


@triton.jit
def _logits_tile(
    h_ptr,
    w_ptr,
    rows,
    cols,
    N,
    V,
    H,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    IEEE: tl.constexpr,
):
    acc = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
    for k0 in range(0, H, BLOCK_K):
        kk = k0 + tl.arange(0, BLOCK_K)
        a = tl.load(h_ptr + rows[:, None] * H + kk[None, :], mask=(rows[:, None] < N) & (kk[None, :] < H), other=0.0)
        b = tl.load(w_ptr + cols[:, None] * H + kk[None, :], mask=(cols[:, None] < V) & (kk[None, :] < H), other=0.0)
        if IEEE:
            acc += tl.dot(a, tl.trans(b), input_precision="ieee")
        else:
            acc += tl.dot(a, tl.trans(b))
    return acc


@triton.jit
def _fwd(
    h_ptr,
    w_ptr,
    y_ptr,
    m_ptr,
    s_ptr,
    w_sum_ptr,
    zy_ptr,
    N,
    V,
    H,
    per_split,
    inv_tau,
    IEEE: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    split = tl.program_id(1).to(tl.int64)
    rows = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    y = tl.load(y_ptr + rows, mask=rows < N, other=-1)
    lo = split * per_split
    hi = tl.minimum(lo + per_split, V)
    m = tl.full((BLOCK_M,), float("-inf"), tl.float32)
    s = tl.zeros((BLOCK_M,), tl.float32)
    w = tl.zeros((BLOCK_M,), tl.float32)
    zy = tl.zeros((BLOCK_M,), tl.float32)
    for n0 in range(lo, hi, BLOCK_N):
        cols = n0 + tl.arange(0, BLOCK_N).to(tl.int64)
        inb = cols[None, :] < hi
        x = _logits_tile(h_ptr, w_ptr, rows, cols, N, V, H, BLOCK_M, BLOCK_N, BLOCK_K, IEEE) * inv_tau
        x = tl.where(inb, x, float("-inf"))
        m_new = tl.maximum(m, tl.max(x, 1))
        delta = tl.where(m > float("-inf"), m - m_new, 0.0)
        scale = tl.exp(delta)
        e = exp_from(x, m_new[:, None])
        w = scale * (w + delta * s) + tl.sum(xlogx_term(e, x - m_new[:, None]), 1)
        s = s * scale + tl.sum(e, 1)
        m = m_new
        zy += tl.sum(tl.where(cols[None, :] == y[:, None], x, 0.0), 1)
    out = split * N + rows
    ok = rows < N
    tl.store(m_ptr + out, m, mask=ok)
    tl.store(s_ptr + out, s, mask=ok)
    tl.store(w_sum_ptr + out, w, mask=ok)
    tl.store(zy_ptr + out, zy, mask=ok)


@triton.jit
def _grad_block(
    h_ptr,
    w_ptr,
    y_ptr,
    glp_ptr,
    gent_ptr,
    lse_ptr,
    ent_ptr,
    out_ptr,
    N,
    V,
    H,
    v0,
    C,
    inv_tau,
    HAS_GENT: tl.constexpr,
    IEEE: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    local = tl.program_id(1).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = v0 + local
    ok_r = rows < N
    x = _logits_tile(h_ptr, w_ptr, rows, cols, N, V, H, BLOCK_M, BLOCK_N, BLOCK_K, IEEE) * inv_tau
    y = tl.load(y_ptr + rows, mask=ok_r, other=-1)
    gl = tl.load(glp_ptr + rows, mask=ok_r, other=0.0)  # zero on ignored rows (set by the launcher)
    logp = x - tl.load(lse_ptr + rows, mask=ok_r, other=0.0)[:, None]
    p = tl.exp(logp)
    g = tl.where(cols[None, :] == y[:, None], gl[:, None], 0.0) - gl[:, None] * p
    if HAS_GENT:
        ge = tl.load(gent_ptr + rows, mask=ok_r, other=0.0)
        h = tl.load(ent_ptr + rows, mask=ok_r, other=0.0)
        g -= ge[:, None] * xlogx_term(p, logp + h[:, None])
    keep = ok_r[:, None] & (local[None, :] < C)
    tl.store(out_ptr + rows[:, None] * C + local[None, :], (g * inv_tau).to(out_ptr.dtype.element_ty), mask=keep)


def _blocks(h: torch.Tensor) -> tuple[int, int, int, int]:
    """(BLOCK_M, BLOCK_N, BLOCK_K, num_warps). On GPUs, tiles that compile without
    register spills for sm_80 and sm_90 (compile_check), where 64 x 128 x 128 with 4 warps spilled
    5 KB (sm_90) to 30 KB (sm_80) per thread in bf16 (ptxas spill stores + loads), 64 x 128 x 64
    in fp32 up to 39 KB."""
    if h.device.type == "cpu":  # the interpreter: tl.dot's smallest tiles
        return 16, 32, 16, 4
    return (64, 64, 32, 8) if h.dtype == torch.float32 else (64, 128, 32, 8)


def forward(
    h: torch.Tensor, w: torch.Tensor, y: torch.Tensor, inv_tau: float, ignore: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(lp, ent, lse) float32 [N] for contiguous h [N, H], w [V, H] (same dtype), y int64 [N]."""
    N, H = h.shape
    V = w.shape[0]
    bm, bn, bk, warps = _blocks(h)
    row_blocks = triton.cdiv(N, bm)
    splits, per_split = split_axis(V, bn, triton.cdiv(4 * sm_count(h.device), row_blocks))
    m, s, ws, zy = (torch.empty(splits, N, dtype=torch.float32, device=h.device) for _ in range(4))
    _fwd[(row_blocks, splits)](
        h,
        w,
        y,
        m,
        s,
        ws,
        zy,
        N,
        V,
        H,
        per_split,
        inv_tau,
        IEEE=h.dtype == torch.float32,
        BLOCK_M=bm,
        BLOCK_N=bn,
        BLOCK_K=bk,
        num_warps=warps,
    )
    big_m = m.max(dim=0).values
    scale = torch.where(m == float("-inf"), 0.0, torch.exp(m - big_m))  # a split with no finite logit adds 0
    total = (s * scale).sum(0)
    w_tot = (scale * (ws + (m - big_m) * s)).sum(0)
    log_s = torch.log(total)
    keep = y != ignore
    lp = torch.where(keep, (zy.sum(0) - big_m - log_s).clamp(max=0.0), 0.0)
    ent = torch.where(keep, (log_s - w_tot / total).clamp(min=0.0, max=float(torch.tensor(V).log())), 0.0)
    lse = torch.where(keep, big_m + log_s, 0.0)
    return lp, ent, lse


def backward(
    glp: torch.Tensor | None,
    gent: torch.Tensor | None,
    h: torch.Tensor,
    w: torch.Tensor,
    y: torch.Tensor,
    lse: torch.Tensor,
    ent: torch.Tensor,
    inv_tau: float,
    ignore: int,
    chunk: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(d hidden, d weight) in h's and w's dtypes, walking the vocabulary in chunks of ``chunk``."""
    N, H = h.shape
    V = w.shape[0]
    keep = (y != ignore).float()
    gl = torch.zeros(N, device=h.device) if glp is None else glp.float() * keep
    ge = None if gent is None else (gent.float() * keep).contiguous()
    gl, lse, ent = gl.contiguous(), lse.float().contiguous(), ent.float().contiguous()
    bm, bn, bk, warps = _blocks(h)
    chunk = min(chunk or vocab_chunk(N), V)
    buf = torch.empty(N * chunk, dtype=h.dtype, device=h.device)
    dh = torch.zeros(N, H, dtype=torch.float32, device=h.device)
    dw = torch.empty_like(w)
    for v0 in range(0, V, chunk):
        c = min(chunk, V - v0)
        g = buf[: N * c].view(N, c)
        _grad_block[(triton.cdiv(N, bm), triton.cdiv(c, bn))](
            h,
            w,
            y,
            gl,
            gl if ge is None else ge,
            lse,
            ent,
            g,
            N,
            V,
            H,
            v0,
            c,
            inv_tau,
            HAS_GENT=ge is not None,
            IEEE=h.dtype == torch.float32,
            BLOCK_M=bm,
            BLOCK_N=bn,
            BLOCK_K=bk,
            num_warps=warps,
        )
        wc = w[v0 : v0 + c]
        dh += (g @ wc).float()
        torch.mm(g.T, h, out=dw[v0 : v0 + c])
    return dh.to(h.dtype), dw
