"""PPO policy and value losses: one program per row walks its tokens in blocks and writes the
row's partial sums (loss, clip, lower clip, kl, tokens); the tiny aggregation over rows is done
in float64 by the launcher. The backward pass writes ``w[row] * d loss_t / d x_t``."""

import torch
import triton
import triton.language as tl

from ._math import clamp, nan_max, nan_min

BLOCK = 512


@triton.jit
def _policy_point(lp, old, a, lo, hi, dual):
    d = lp - old
    r = tl.exp(clamp(d, -20.0, 20.0))
    dr = tl.where((d < -20.0) | (d > 20.0), 0.0, r)  # NaN keeps r (NaN)
    l1 = -a * r
    l2 = -a * clamp(r, 1.0 - lo, 1.0 + hi)
    first = ~(l1 < l2)  # a NaN term takes this branch: loss and gradient stay NaN
    c1 = tl.where(first, l1, l2)
    g = tl.where(first, -a * dr, 0.0)
    l3 = -dual * a
    lower = (dual > 0) & (a < 0) & (c1 > l3)
    return tl.where(lower, l3, c1), tl.where(lower, 0.0, g), tl.where(l2 > l1, 1.0, 0.0), tl.where(lower, 1.0, 0.0)


@triton.jit
def _value_point(v, old, ret, eps):
    d1 = v - ret
    # a NaN old value propagates, as in torch; unclipped (eps = inf), old is not read
    vc = tl.where(eps == float("inf"), v, nan_max(nan_min(v, old + eps), old - eps))
    d2 = vc - ret
    l1 = d1 * d1
    l2 = d2 * d2
    g = tl.where(l1 < l2, 0.0, 2.0 * d1)
    # torch.maximum(l1, l2): NaN if either is (a NaN old value); the gradient then NaN too
    return nan_max(l1, l2), tl.where(l2 != l2, l2, g), tl.where(l2 > l1, 1.0, 0.0)


@triton.jit
def _rows_fwd(x_ptr, y_ptr, z_ptr, m_ptr, part_ptr, T, p0, p1, p2, POLICY: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    acc = tl.zeros((BLOCK,), tl.float32)
    acc_c = tl.zeros((BLOCK,), tl.float32)
    acc_l = tl.zeros((BLOCK,), tl.float32)
    acc_k = tl.zeros((BLOCK,), tl.float32)
    acc_n = tl.zeros((BLOCK,), tl.float32)
    for t0 in range(0, T, BLOCK):
        offs = t0 + tl.arange(0, BLOCK)
        inb = offs < T
        idx = row * T + offs
        on = (tl.load(m_ptr + idx, mask=inb, other=0) != 0) & inb
        x = tl.load(x_ptr + idx, mask=inb, other=0.0).to(tl.float32)
        y = tl.load(y_ptr + idx, mask=inb, other=0.0).to(tl.float32)
        z = tl.load(z_ptr + idx, mask=inb, other=0.0).to(tl.float32)
        if POLICY:
            loss, g, clip, low = _policy_point(x, y, z, p0, p1, p2)
            acc_l += tl.where(on, low, 0.0)
            acc_k += tl.where(on, y - x, 0.0)
        else:
            loss, g, clip = _value_point(x, y, z, p0)
        acc += tl.where(on, loss, 0.0)
        acc_c += tl.where(on, clip, 0.0)
        acc_n += tl.where(on, 1.0, 0.0)
    base = part_ptr + row * 5
    tl.store(base + 0, tl.sum(acc, 0))
    tl.store(base + 1, tl.sum(acc_c, 0))
    tl.store(base + 2, tl.sum(acc_l, 0))
    tl.store(base + 3, tl.sum(acc_k, 0))
    tl.store(base + 4, tl.sum(acc_n, 0))


@triton.jit
def _rows_bwd(x_ptr, y_ptr, z_ptr, m_ptr, w_ptr, out_ptr, T, p0, p1, p2, POLICY: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    w = tl.load(w_ptr + row)
    for t0 in range(0, T, BLOCK):
        offs = t0 + tl.arange(0, BLOCK)
        inb = offs < T
        idx = row * T + offs
        on = tl.load(m_ptr + idx, mask=inb, other=0) != 0
        x = tl.load(x_ptr + idx, mask=inb, other=0.0).to(tl.float32)
        y = tl.load(y_ptr + idx, mask=inb, other=0.0).to(tl.float32)
        z = tl.load(z_ptr + idx, mask=inb, other=0.0).to(tl.float32)
        if POLICY:
            loss, g, clip, low = _policy_point(x, y, z, p0, p1, p2)
        else:
            loss, g, clip = _value_point(x, y, z, p0)
        tl.store(out_ptr + idx, tl.where(on, w * g, 0.0).to(out_ptr.dtype.element_ty), mask=inb)


def rows_forward(
    policy: bool, x: torch.Tensor, y: torch.Tensor, z: torch.Tensor, m: torch.Tensor, p0: float, p1: float, p2: float
) -> torch.Tensor:
    """Per-row partial sums [B, 5] = (loss, clip, lower clip, kl, tokens) of the policy loss (x=lp,
    y=old, z=adv) or the value loss (x=v, y=old_v, z=returns); ``m`` uint8; (p0, p1, p2) from
    :func:`crs_fast.kernels._rows.params`. :func:`crs_fast.kernels._rows.aggregate` finishes them."""
    B, T = x.shape
    parts = torch.empty(B, 5, dtype=torch.float32, device=x.device)
    _rows_fwd[(B,)](x, y, z, m, parts, T, p0, p1, p2, POLICY=policy, BLOCK=BLOCK)
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
    """Gradient of the policy loss w.r.t. lp, or of the value loss w.r.t. v: each row's per-token
    gradient times its weight ``w`` (float32 [B], :func:`crs_fast.kernels._rows.grad_weights`)."""
    out = torch.empty_like(x)
    _rows_bwd[(x.shape[0],)](x, y, z, m, w, out, x.shape[1], p0, p1, p2, POLICY=policy, BLOCK=BLOCK)
    return out
