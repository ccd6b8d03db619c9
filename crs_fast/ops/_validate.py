"""Argument checks shared by the public ops. Each error names the argument and what was expected.

Only metadata (types, shapes, dtypes, devices, Python scalars) is checked here, so the checks
trace under ``torch.compile``; checks that read tensor data live in the op implementations.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def tensor(
    name: str,
    x: object,
    *,
    ndim: int | None = None,
    min_ndim: int | None = None,
    floating: bool = False,
    integer: bool = False,
) -> torch.Tensor:
    """Check that ``x`` is a tensor with the given rank and kind of dtype."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"`{name}` must be a torch.Tensor, got {type(x).__name__}")
    if ndim is not None and x.dim() != ndim:
        raise ValueError(f"`{name}` must have {ndim} dimension(s), got shape {list(x.shape)}")
    if min_ndim is not None and x.dim() < min_ndim:
        raise ValueError(f"`{name}` must have at least {min_ndim} dimension(s), got shape {list(x.shape)}")
    if floating and x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"`{name}` must be float32, bfloat16, float16 or float64, got {x.dtype}")
    if integer and (x.dtype.is_floating_point or x.dtype.is_complex or x.dtype == torch.bool):
        raise TypeError(f"`{name}` must be an integer tensor, got {x.dtype}")
    return x


def same_shape(ref_name: str, ref: torch.Tensor, **others: torch.Tensor) -> None:
    """Every tensor in ``others`` has the shape of ``ref``."""
    for name, t in others.items():
        if t.shape != ref.shape:
            raise ValueError(f"`{name}` has shape {list(t.shape)} but `{ref_name}` has {list(ref.shape)}")


def same_device(ref_name: str, ref: torch.Tensor, **others: torch.Tensor | None) -> None:
    """Every tensor in ``others`` is on the device of ``ref``."""
    for name, t in others.items():
        if t is not None and t.device != ref.device:
            raise ValueError(f"`{name}` is on {t.device} but `{ref_name}` is on {ref.device}")


def same_dtype(ref_name: str, ref: torch.Tensor, **others: torch.Tensor | None) -> None:
    """Every tensor in ``others`` has the dtype of ``ref``."""
    for name, t in others.items():
        if t is not None and t.dtype != ref.dtype:
            raise TypeError(f"`{name}` is {t.dtype} but `{ref_name}` is {ref.dtype}; pass one dtype")


def non_empty(name: str, x: torch.Tensor) -> None:
    """``x`` has at least one element."""
    if x.numel() == 0:
        raise ValueError(f"`{name}` is empty (shape {list(x.shape)}); at least one element is needed")


def mask_tensor(name: str, mask: object) -> torch.Tensor:
    """A mask: bool, integer or float tensor whose nonzero entries count."""
    m = tensor(name, mask)
    if m.dtype.is_complex:
        raise TypeError(f"`{name}` must be a bool, integer or float tensor, got {m.dtype}")
    return m


def unit_interval(name: str, x: object) -> float:
    """A real number in [0, 1]."""
    v = number(name, x)
    if not 0.0 <= v <= 1.0:
        raise ValueError(f"`{name}` must lie in [0, 1], got {v}")
    return v


def number(name: str, x: object, *, min_value: float | None = None, strict: bool = False) -> float:
    """A finite real number, optionally bounded below (strictly with ``strict``)."""
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        raise TypeError(f"`{name}` must be a real number, got {type(x).__name__}")
    v = float(x)
    if not math.isfinite(v):
        raise ValueError(f"`{name}` must be finite, got {v}")
    if min_value is not None and (v <= min_value if strict else v < min_value):
        bound = ">" if strict else ">="
        raise ValueError(f"`{name}` must be {bound} {min_value}, got {v}")
    return v


def choice(name: str, x: object, options: Sequence[str]) -> str:
    """One of a fixed set of strings."""
    if x not in options:
        raise ValueError(f"`{name}` must be one of {tuple(options)}, got {x!r}")
    return str(x)
