"""Elementwise helpers shared by the Triton kernels, with the CPU kernels' NaN rules
(csrc/common.h): a clamp that propagates a NaN argument instead of returning a bound (GPU
``min``/``max`` instructions drop NaN), and the entropy term ``p * x`` that is 0 where ``p`` is 0
(a -inf logit), so that ``0 log 0 = 0``."""

import triton
import triton.language as tl


@triton.jit
def clamp(x, lo, hi):
    """``min(max(x, lo), hi)``; NaN stays NaN."""
    return tl.where(x < lo, lo, tl.where(x > hi, hi, x))


@triton.jit
def nan_min(a, b):
    """``torch.minimum``: NaN when either operand is."""
    return tl.where(a < b, a, tl.where(b <= a, b, a + b))


@triton.jit
def nan_max(a, b):
    """``torch.maximum``: NaN when either operand is."""
    return tl.where(a > b, a, tl.where(b >= a, b, a + b))


@triton.jit
def xlogx_term(e, x):
    """``e * x``, 0 where ``e == 0`` (``x`` may be -inf there)."""
    return tl.where(e == 0.0, 0.0, e * x)


@triton.jit
def exp_from(x, m):
    """``exp(x - m)``, 0 where ``x`` is -inf (also when ``m`` is -inf: a block with no finite logit)."""
    return tl.where(x == float("-inf"), 0.0, tl.exp(x - m))
