"""Plumbing shared by the ops: the compiled module, dtype codes, raw pointers, backend choice.

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

try:
    from crs_fast import _C
except ImportError as exc:  # the package still works through the reference
    _C = None
    _C_ERROR = f"the compiled module crs_fast._C did not import ({exc})"
else:
    _C_ERROR = ""

BACKENDS = ("cpu", "torch", "triton", "cuda")

_DTYPE_CODES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2, torch.float64: 3}


class BackendUnavailableError(RuntimeError):
    """An explicitly requested backend cannot run these inputs."""


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


# Ops with Triton kernels (crs_fast/kernels/triton) and CUDA C++ kernels (csrc/<op>/<op>_cuda.cu,
# launched by crs_fast/kernels/cuda). The fused LM head is Triton-only (README: "GPU backends").
TRITON_OPS = frozenset(
    {
        "gae",
        "kl_penalty",
        "linear_logprobs",
        "ppo_policy_loss",
        "ppo_value_loss",
        "token_logprobs",
        "token_rewards",
        "topk_scores",
    }
)
CUDA_OPS = TRITON_OPS - {"linear_logprobs"}

# Automatic choice for CUDA tensors, per op: (backend, the measurement behind it). Until a GPU run
# of bench/gpu_check.sh is committed under bench/results/, the entries are provisional and say so;
# the other GPU backend is the fallback when the chosen one cannot run (e.g. triton not installed).
_UNMEASURED = "provisional: no GPU measurement committed yet (bench/results/ holds CPU runs only)"
GPU_DISPATCH: dict[str, tuple[str, str]] = {
    "gae": ("triton", _UNMEASURED),
    "kl_penalty": ("triton", _UNMEASURED),
    "token_rewards": ("triton", _UNMEASURED),
    "ppo_policy_loss": ("triton", _UNMEASURED),
    "ppo_value_loss": ("triton", _UNMEASURED),
    "token_logprobs": ("triton", _UNMEASURED),
    "linear_logprobs": ("triton", "the only GPU kernel: the fused LM head is Triton-only"),
    "topk_scores": ("triton", _UNMEASURED + "; Triton keeps O(B*k) memory, CUDA a [B, chunk] score block"),
}


def gpu_kernels(backend: str, name: str) -> Any:
    """The launcher module ``name`` of a GPU backend ("triton" or "cuda")."""
    import importlib

    return importlib.import_module(f"crs_fast.kernels.{backend}.{name}")


def _why_not(backend: str, device: torch.device, op: str = "", limits: dict[str, str] | None = None) -> str:
    """Empty if ``backend`` can run ``op`` on ``device``, else the reason it cannot. ``limits``:
    per backend, why it cannot run these particular arguments (a k too large, a dtype)."""
    if backend == "torch":
        return ""
    if limits and limits.get(backend):
        return limits[backend]
    if backend == "triton":
        if op and op not in TRITON_OPS:
            return f"no Triton kernel for {op} yet"
        from ..kernels.triton import unavailable

        return unavailable(device.type)
    if backend == "cpu":
        if _C is None:
            return _C_ERROR
        if device.type != "cpu":
            return f"it runs CPU tensors and these are on {device}"
        return ""
    if backend == "cuda":
        if op and op not in CUDA_OPS:
            return f"no CUDA C++ kernel for {op} (Triton-only)"
        from ..kernels.cuda import unavailable

        return unavailable(device.type)
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


def empty(shape: tuple[int, ...] | torch.Size, like: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """A new contiguous tensor on ``like``'s device (for kernel outputs and fakes)."""
    return torch.empty(tuple(shape), dtype=dtype or like.dtype, device=like.device)


def sentinel(x: float | None) -> float:
    """An optional non-negative parameter as the kernels take it: -1 for None."""
    return -1.0 if x is None else x


def acc_dtype(t: torch.Tensor) -> torch.dtype:
    """Accumulation and statistics dtype: float64 for float64 inputs, else float32."""
    return torch.float64 if t.dtype == torch.float64 else torch.float32


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
