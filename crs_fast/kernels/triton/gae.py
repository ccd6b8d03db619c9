"""GAE in the verl, TRL and OpenRLHF conventions, two variants (rows are grid dimension 0 in both,
so a long T never meets a grid limit); whitening then uses the reference's formula on the raw
advantages.

* "rows": each program scans BLOCK_B rows backwards over time, one row per lane (many rows).
* "chunked": one program per row walks time in tiles of BLOCK_T from the end; inside a tile the
  recursion ``A_t = a_t * A_{t+1} + b_t`` is an associative scan over affine maps (composition),
  and the tile's result carries into the next tile (few rows, long T). verl's skipping of
  masked tokens is the map (1, 0) on them, and its "value of the next valid token" is a second
  affine scan, ``x_t = (1 - m_{t+1}) x_{t+1} + m_{t+1} v_{t+1}``.
"""

import torch
import triton
import triton.language as tl

from ..._native import GAE_MODES
from .._rows import finish_gae, last_valid
from . import sm_count

BLOCK_B = 16


@triton.jit
def _scan(r_ptr, v_ptr, m_ptr, last_ptr, adv_ptr, ret_ptr, B, T, gamma, gl, MODE: tl.constexpr, BLOCK_B: tl.constexpr):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_B + tl.arange(0, BLOCK_B)
    ok = rows < B
    last = tl.load(last_ptr + rows, mask=ok, other=-1)
    next_v = tl.zeros((BLOCK_B,), tl.float32)
    last_a = tl.zeros((BLOCK_B,), tl.float32)
    for i in range(0, T):
        t = T - 1 - i
        idx = rows * T + t
        m = (tl.load(m_ptr + idx, mask=ok, other=0) != 0).to(tl.float32)
        r = tl.load(r_ptr + idx, mask=ok, other=0.0).to(tl.float32)
        v = tl.load(v_ptr + idx, mask=ok, other=0.0).to(tl.float32)
        if MODE == 2:  # OpenRLHF: rewards and values masked first (selects: a NaN there must not leak)
            r = tl.where(m != 0, r, 0.0)
            v = tl.where(m != 0, v, 0.0)
        if MODE == 1:  # TRL: values past each row's last valid token are zero
            v = tl.where(t <= last, v, 0.0)
        cand = r + gamma * next_v - v + gl * last_a
        if MODE == 0:  # verl: observation tokens carry both over
            upd = m != 0
            next_v = tl.where(upd, v, next_v)
            last_a = tl.where(upd, cand, last_a)
        else:
            next_v = v
            last_a = cand
        tl.store(adv_ptr + idx, last_a, mask=ok)
        tl.store(ret_ptr + idx, (last_a + v).to(ret_ptr.dtype.element_ty), mask=ok)


@triton.jit
def _compose(a_later, b_later, a_earlier, b_earlier):
    # scan order runs backwards in time: apply the later map first, then the earlier one
    return a_earlier * a_later, a_earlier * b_later + b_earlier


@triton.jit
def _chunked(r_ptr, v_ptr, m_ptr, last_ptr, adv_ptr, ret_ptr, T, gamma, gl, MODE: tl.constexpr, BLOCK_T: tl.constexpr):
    """One row per program, time in tiles of BLOCK_T (see the module docstring). Compiled for
    sm_80 in the OpenRLHF mode with 16-bit inputs it spills 16 bytes per thread (ptxas, an
    8-byte stack frame; crs_fast.kernels.triton.compile_check); not retiled until a GPU run
    shows a cost."""
    row = tl.program_id(0).to(tl.int64)
    last = tl.load(last_ptr + row)
    base = row * T
    i = tl.arange(0, BLOCK_T)
    carry_a = tl.zeros((), tl.float32)  # A_{t+1} entering the tile
    carry_x = tl.zeros((), tl.float32)  # verl: value of the next valid token
    for start in range(0, T, BLOCK_T):
        t = T - 1 - start - i  # backwards in time along the tile
        ok = t >= 0
        t1 = t + 1
        ok1 = ok & (t1 < T)
        m = (tl.load(m_ptr + base + t, mask=ok, other=0) != 0).to(tl.float32)
        r = tl.load(r_ptr + base + t, mask=ok, other=0.0).to(tl.float32)
        v = tl.load(v_ptr + base + t, mask=ok, other=0.0).to(tl.float32)
        v1 = tl.load(v_ptr + base + t1, mask=ok1, other=0.0).to(tl.float32)
        if MODE == 0:  # verl: next value = value of the next valid token (scan over t + 1)
            m1 = (tl.load(m_ptr + base + t1, mask=ok1, other=0) != 0).to(tl.float32)
            xa, xb = tl.associative_scan((1.0 - m1, tl.where(m1 != 0, v1, 0.0)), 0, _compose)
            nv = xa * carry_x + xb
            carry_x = tl.sum(tl.where(i == BLOCK_T - 1, nv, 0.0), 0)  # x_{t+1} at the tile's earliest t
        elif MODE == 1:  # TRL: values past each row's last valid token are zero
            v = tl.where(t <= last, v, 0.0)
            nv = tl.where(t1 <= last, v1, 0.0)
        else:  # OpenRLHF: rewards and values masked first
            m1 = (tl.load(m_ptr + base + t1, mask=ok1, other=0) != 0).to(tl.float32)
            r = tl.where(m != 0, r, 0.0)
            v = tl.where(m != 0, v, 0.0)
            nv = tl.where(m1 != 0, v1, 0.0)
        delta = r + gamma * nv - v
        if MODE == 0:
            a = tl.where(m != 0, gl, 1.0)
            b = tl.where(m != 0, delta, 0.0)
        else:
            a = tl.zeros((BLOCK_T,), tl.float32) + gl
            b = delta
        a = tl.where(ok, a, 1.0)
        b = tl.where(ok, b, 0.0)
        ca, cb = tl.associative_scan((a, b), 0, _compose)
        adv = ca * carry_a + cb
        carry_a = tl.sum(tl.where(i == BLOCK_T - 1, adv, 0.0), 0)
        tl.store(adv_ptr + base + t, adv, mask=ok)
        tl.store(ret_ptr + base + t, (adv + v).to(ret_ptr.dtype.element_ty), mask=ok)


def choose_variant(B: int, T: int, device: torch.device) -> str:
    """ "rows" when there are rows enough to fill the machine one lane each, else "chunked"."""
    if device.type != "cuda":
        return "rows"
    return "rows" if triton.cdiv(B, BLOCK_B) >= 4 * sm_count(device) or T < 256 else "chunked"


def gae(
    r: torch.Tensor,
    v: torch.Tensor,
    m: torch.Tensor,
    gamma: float,
    lam: float,
    mode: str,
    whiten: bool,
    variant: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(advantages, returns) in r's dtype; ``m`` uint8 [B, T], contiguous inputs; ``variant``
    "rows" or "chunked" (default: :func:`choose_variant`)."""
    B, T = r.shape
    adv = torch.empty(B, T, dtype=torch.float32, device=r.device)
    ret = torch.empty_like(r)
    last = last_valid(m).contiguous()
    variant = variant or choose_variant(B, T, r.device)
    if variant == "chunked":
        block_t = 32 if r.device.type == "cpu" else 1024
        _chunked[(B,)](r, v, m, last, adv, ret, T, gamma, gamma * lam, MODE=GAE_MODES[mode], BLOCK_T=block_t)
    elif variant == "rows":
        _scan[(triton.cdiv(B, BLOCK_B),)](
            r, v, m, last, adv, ret, B, T, gamma, gamma * lam, MODE=GAE_MODES[mode], BLOCK_B=BLOCK_B
        )
    else:
        raise ValueError(f"variant must be 'rows' or 'chunked', got {variant!r}")
    return finish_gae(adv, m, mode, whiten, r.dtype), ret
