"""How an op call reaches a kernel: the backend choice and the custom-op calling paths.

Backends: ``"cpu"`` (the C++ kernels of ``crs_fast._C``, CPU tensors), ``"torch"`` (the
pure-PyTorch reference, any device), ``"triton"`` (CUDA tensors, for the ops in ``TRITON_OPS``;
CPU tensors under ``TRITON_INTERPRET=1``, for tests) and ``"cuda"`` (the CUDA C++ kernels compiled into
``crs_fast._C`` when nvcc was found at build time, for the ops in ``CUDA_OPS``). ``backend=None``
picks the fastest that can run (for CUDA tensors: per op, from ``GPU_DISPATCH``); ``backend=`` per call or the
``CRS_FAST_BACKEND`` environment variable overrides, and a backend that cannot run raises
:class:`BackendUnavailableError` listing every backend and why it cannot run.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch.utils._python_dispatch import _get_current_dispatch_mode

from .. import _native
from ..kernels import GPU_DISPATCH
from ..kernels import unavailable as gpu_unavailable

BACKENDS = ("cpu", "torch", "triton", "cuda")


class BackendUnavailableError(RuntimeError):
    """An explicitly requested backend cannot run these inputs."""


def _why_not(backend: str, device: torch.device, op: str = "", limits: dict[str, str] | None = None) -> str:
    """Empty if ``backend`` can run ``op`` on ``device``, else the reason it cannot. ``limits``:
    per backend, why it cannot run these particular arguments (a k too large, a dtype)."""
    if backend == "torch":
        return ""
    if limits and limits.get(backend):
        return limits[backend]
    if backend in ("triton", "cuda"):
        return gpu_unavailable(backend, op, device.type)
    if backend == "cpu":
        if _native._C is None:
            return _native.C_ERROR
        if device.type != "cpu":
            return f"it runs CPU tensors and these are on {device}"
        return ""
    return "no such backend"


def resolve_backend(requested: str, device: torch.device, op: str = "", limits: dict[str, str] | None = None) -> str:
    """The backend to run ``op``: ``requested`` ("" for automatic), else ``CRS_FAST_BACKEND``.
    Automatic: the C++ kernels for CPU tensors; for CUDA tensors the op's entry in
    ``GPU_DISPATCH``, then the other GPU backend; else the reference. ``limits`` (backend ->
    reason) rules backends out for these arguments, as the op's own checks found."""
    choice = requested or os.environ.get("CRS_FAST_BACKEND", "") or "auto"
    if choice == "auto":  # Triton's CPU interpreter is for tests, never an automatic choice
        if device.type == "cpu":
            preferred: tuple[str, ...] = ("cpu",)
        elif device.type == "cuda":
            first = GPU_DISPATCH.get(op, ("triton", ""))[0]
            preferred = (first, "cuda" if first == "triton" else "triton")
        else:
            preferred = ()
        return next((b for b in preferred if not _why_not(b, device, op, limits)), "torch")
    if choice not in BACKENDS:
        source = "backend=" if requested else "CRS_FAST_BACKEND"
        raise ValueError(f"{source} must be one of {BACKENDS} or 'auto', got {choice!r}")
    reason = _why_not(choice, device, op, limits)
    if reason:
        lines = [f"backend {choice!r} cannot run {op or 'these inputs'} ({device}):"]
        for name in BACKENDS:
            why = _why_not(name, device, op, limits)
            lines.append(f"  {name}: {why or 'available'}")
        raise BackendUnavailableError("\n".join(lines))
    return choice


def check_backend_arg(backend: Any) -> str:
    """Validate a ``backend=`` argument; returns "" for automatic choice."""
    if backend is None:
        return ""
    if not isinstance(backend, str) or backend not in (*BACKENDS, "auto"):
        raise ValueError(f"backend must be None, 'auto' or one of {BACKENDS}, got {backend!r}")
    return "" if backend == "auto" else backend


def _impl(op: Any) -> Any:
    """The Python implementation behind a ``torch.library.custom_op`` (private attribute, checked)."""
    return getattr(op, "_init_fn", None)


def _tracing(args: tuple) -> bool:
    """Whether these arguments are being traced (torch.compile, export, AOT autograd, fake or
    functional tensors, a dispatch mode): then the dispatcher must run the op, not its body."""
    if torch.compiler.is_compiling() or _get_current_dispatch_mode() is not None:
        return True
    return any(isinstance(a, torch.Tensor) and type(a) not in (torch.Tensor, torch.nn.Parameter) for a in args)


def call(op: Any, *args: Any) -> Any:
    """Run a custom op without autograd: through the dispatcher while tracing, straight to its
    implementation in eager mode, which saves the dispatcher's ~50 us a call."""
    fn = _impl(op)
    if fn is None or _tracing(args):
        return op(*args)
    return fn(*args)


def eager_autograd(op: Any, setup_context: Any, backward: Any) -> Any:
    """An ``autograd.Function`` running ``op``'s implementation with the same ``setup_context``
    and ``backward`` that ``op.register_autograd`` received: the eager fast path of
    :func:`call_autograd`."""
    fn = _impl(op)

    class EagerOp(torch.autograd.Function):
        @staticmethod
        def forward(ctx, *args):  # type: ignore[override]
            out = fn(*args)
            setup_context(ctx, args, out)
            return out

        @staticmethod
        def backward(ctx, *grads):  # type: ignore[override]
            return backward(ctx, *grads)

    EagerOp.__name__ = f"Eager_{getattr(op, '_name', 'op')}".replace("::", "_")
    return EagerOp if fn is not None else None


def call_autograd(op: Any, eager: Any, *args: Any) -> Any:
    """Run a differentiable custom op: the registered op while tracing, ``eager`` (from
    :func:`eager_autograd`) otherwise."""
    if eager is None or _tracing(args):
        return op(*args)
    return eager.apply(*args)
