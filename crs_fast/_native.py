"""The compiled module ``crs_fast._C`` and its calling conventions, shared by the ops and the
kernel launchers (a leaf: imports nothing from crs_fast).

The C++ and CUDA entry points take raw pointers (:func:`ptr`) to contiguous tensors, a dtype
code (:func:`dtype_code`), integer mode codes (the tables below, written once: the kernels'
``switch`` statements in ``csrc/`` use the same numbers), optional parameters as a sentinel
(:func:`sentinel`), masks as bytes (:func:`as_mask`) and a thread count (:func:`nthreads`).
"""

from __future__ import annotations

import torch

try:
    from crs_fast import _C
except ImportError as exc:  # the package still works through the reference
    _C = None
    C_ERROR = f"the compiled module crs_fast._C did not import ({exc})"
else:
    C_ERROR = ""

_DTYPE_CODES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2, torch.float64: 3}

# Mode codes, name -> the integer the kernels switch on. The tuples of names are the public choices.
GAE_MODES = {"verl": 0, "trl": 1, "openrlhf": 2}
GROUP_MODES = {"grpo": 0, "rloo": 1}
AGG_MODES = {"token-mean": 0, "seq-mean-token-sum": 1, "seq-mean-token-mean": 2, "seq-mean-token-sum-norm": 3}
KL_BASE_KINDS = {"k1": 0, "abs": 1, "k2": 2, "k3": 3}  # a "+" suffix: straight-through gradient
KL_KINDS = (*KL_BASE_KINDS, *(k + "+" for k in KL_BASE_KINDS))


def dtype_code(t: torch.Tensor) -> int:
    """The kernels' code for a float tensor's dtype."""
    return _DTYPE_CODES[t.dtype]


def ptr(t: torch.Tensor | None) -> int:
    """Address of a contiguous tensor's data, 0 for None."""
    return 0 if t is None else t.data_ptr()


def nthreads() -> int:
    """Threads for the C++ kernels: follows ``torch.set_num_threads``."""
    return torch.get_num_threads()


def as_mask(mask: torch.Tensor) -> torch.Tensor:
    """Row-major contiguous bytes whose nonzero entries are the mask's, for kernels that index
    ``mask[b * T + t]``: bool and 8-bit masks are viewed as they are (the kernels test ``!= 0``),
    other dtypes compared with 0. Any layout is accepted (transposed, strided, expanded): the
    comparison keeps its input's strides, so the result is made contiguous after it."""
    if mask.dtype in (torch.bool, torch.uint8, torch.int8):
        return mask.contiguous().view(torch.uint8)
    return mask.ne(0).contiguous().view(torch.uint8)


def empty(shape: tuple[int, ...] | torch.Size, like: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """A new contiguous tensor on ``like``'s device (for kernel outputs and fakes)."""
    return torch.empty(tuple(shape), dtype=dtype or like.dtype, device=like.device)


def sentinel(x: float | None) -> float:
    """An optional non-negative parameter as the kernels take it: -1 for None."""
    return -1.0 if x is None else x


def acc_dtype(t: torch.Tensor) -> torch.dtype:
    """Accumulation and statistics dtype: float64 for float64 inputs, else float32."""
    return torch.float64 if t.dtype == torch.float64 else torch.float32
