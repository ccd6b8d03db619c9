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
