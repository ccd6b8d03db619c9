"""Triton kernels and their launchers. They run on CUDA tensors, and on CPU tensors under
``TRITON_INTERPRET=1`` (Triton's interpreter: how the CPU test suite checks them)."""

import os


def unavailable(device_type: str) -> str:
    """Empty if the Triton kernels can run on this device type, else why not."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return "triton is not installed"
    if device_type == "cuda":
        return ""
    if device_type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1":
        return ""
    return f"it runs CUDA tensors (or CPU tensors under TRITON_INTERPRET=1) and these are on {device_type}"


def sm_count(device) -> int:
    """Streaming multiprocessors of ``device``: 2 for the CPU interpreter (so splitting is
    exercised), an H100's / H200's 132 for ``meta`` tensors (the compile check's stand-in GPU)."""
    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 132 if device.type == "meta" else 2


def split_axis(n: int, block: int, programs: int, cap: int = 1 << 30) -> tuple[int, int]:
    """(splits, per_split): cut an axis of ``n`` into at most ``programs`` (and ``cap``) slices,
    each a whole number of ``block``s, none empty."""
    import triton

    splits = max(1, min(triton.cdiv(n, block), programs, cap))
    per_split = triton.cdiv(triton.cdiv(n, splits), block) * block
    return triton.cdiv(n, per_split), per_split
