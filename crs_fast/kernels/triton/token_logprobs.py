"""Token log-probs and entropy: one program per row walks the vocabulary in blocks with an online
max / sum / weighted sum (no [N, V] buffer); the backward pass writes the gradient in one more
walk. Offsets are int64 (N*V passes 2^31 at real sizes) and rows are grid dimension 0."""

import torch
import triton
import triton.language as tl

from ._math import clamp, exp_from, xlogx_term

BLOCK_V = 1024


@triton.jit
def _fwd(z_ptr, y_ptr, lp_ptr, ent_ptr, lse_ptr, V, inv_tau, ignore, BLOCK_V: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    y = tl.load(y_ptr + row)
    m = tl.full((), float("-inf"), tl.float32)
    s = tl.zeros((), tl.float32)
    w = tl.zeros((), tl.float32)
    for v0 in range(0, V, BLOCK_V):
        offs = v0 + tl.arange(0, BLOCK_V)
        x = tl.load(z_ptr + row * V + offs, mask=offs < V, other=float("-inf")).to(tl.float32) * inv_tau
        m_new = tl.maximum(m, tl.max(x, 0))
        delta = tl.where(m > float("-inf"), m - m_new, 0.0)
        scale = tl.exp(delta)
        e = exp_from(x, m_new)
        w = scale * (w + delta * s) + tl.sum(xlogx_term(e, x - m_new), 0)
        s = s * scale + tl.sum(e, 0)
        m = m_new
    log_s = tl.log(s)
    zy = tl.load(z_ptr + row * V + tl.maximum(y, 0)).to(tl.float32) * inv_tau
    keep = y != ignore
    tl.store(lp_ptr + row, tl.where(keep, clamp(zy - m - log_s, float("-inf"), 0.0), 0.0))
    ent = clamp(log_s - w / s, 0.0, tl.log(V.to(tl.float32)))
    tl.store(ent_ptr + row, tl.where(keep, ent, 0.0))
    tl.store(lse_ptr + row, tl.where(keep, m + log_s, 0.0))


@triton.jit
def _bwd(
    z_ptr,
    y_ptr,
    glp_ptr,
    gent_ptr,
    lse_ptr,
    ent_ptr,
    out_ptr,
    V,
    inv_tau,
    ignore,
    HAS_GENT: tl.constexpr,
    BLOCK_V: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    y = tl.load(y_ptr + row)
    keep = y != ignore
    gl = tl.where(keep, tl.load(glp_ptr + row), 0.0)
    ge = 0.0
    if HAS_GENT:
        ge = tl.where(keep, tl.load(gent_ptr + row), 0.0)
    lse = tl.load(lse_ptr + row)
    h = tl.load(ent_ptr + row)
    for v0 in range(0, V, BLOCK_V):
        offs = v0 + tl.arange(0, BLOCK_V)
        inb = offs < V
        logp = tl.load(z_ptr + row * V + offs, mask=inb, other=0.0).to(tl.float32) * inv_tau - lse
        p = tl.exp(logp)
        g = inv_tau * (tl.where(offs == y, gl, 0.0) - gl * p - ge * xlogx_term(p, logp + h))
        tl.store(out_ptr + row * V + offs, tl.where(keep, g, 0.0).to(out_ptr.dtype.element_ty), mask=inb)


def forward(z: torch.Tensor, y: torch.Tensor, inv_tau: float, ignore: int) -> tuple[torch.Tensor, ...]:
    """(lp, ent, lse) float32 [N] of logits z [N, V] (contiguous) and labels y [N] (int64)."""
    N, V = z.shape
    lp, ent, lse = (torch.empty(N, dtype=torch.float32, device=z.device) for _ in range(3))
    _fwd[(N,)](z, y, lp, ent, lse, V, inv_tau, ignore, BLOCK_V=BLOCK_V)
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
    out = torch.empty_like(z)
    _bwd[(N,)](
        z,
        y,
        glp,
        glp if gent is None else gent,
        lse,
        ent,
        out,
        V,
        inv_tau,
        ignore,
        HAS_GENT=gent is not None,
        BLOCK_V=BLOCK_V,
    )
    return out
