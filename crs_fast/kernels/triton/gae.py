"""GAE in the verl, TRL and OpenRLHF conventions: each program scans BLOCK_B rows backwards over
time, one row per lane (rows are grid dimension 0, so a long T never meets a grid limit);
whitening then uses the reference's formula on the raw advantages."""

import torch
import triton
import triton.language as tl

from ...ops import reference

BLOCK_B = 16
_MODES = {"verl": 0, "trl": 1, "openrlhf": 2}


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
        if MODE == 2:  # OpenRLHF: rewards and values masked first
            r = r * m
            v = v * m
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


def gae(
    r: torch.Tensor, v: torch.Tensor, m: torch.Tensor, gamma: float, lam: float, mode: str, whiten: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """(advantages, returns) in r's dtype; ``m`` uint8 [B, T], contiguous inputs."""
    B, T = r.shape
    adv = torch.empty(B, T, dtype=torch.float32, device=r.device)
    ret = torch.empty_like(r)
    _scan[(triton.cdiv(B, BLOCK_B),)](
        r,
        v,
        m,
        reference.last_valid(m).contiguous(),
        adv,
        ret,
        B,
        T,
        gamma,
        gamma * lam,
        MODE=_MODES[mode],
        BLOCK_B=BLOCK_B,
    )
    mf = (m != 0).float()
    if whiten:
        adv = reference.standardize(adv, mf, unbiased=mode != "openrlhf", clamp_eps=mode == "openrlhf")
    if mode == "trl":
        adv = adv * mf
    return adv.to(r.dtype), ret
