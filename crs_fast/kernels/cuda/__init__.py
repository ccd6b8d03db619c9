"""Launchers of the CUDA C++ kernels (csrc/<op>/<op>_cuda.cu, compiled into ``crs_fast._C`` when
CMake finds nvcc). Same functions and contracts as the Triton launchers of the same name, so the
ops pick either module by backend name. Every launch goes on the current torch CUDA stream."""

import torch

from ..._native import _C


def unavailable(device_type: str) -> str:
    """Empty if the CUDA C++ kernels can run tensors of this device type, else why not."""
    if _C is None or not getattr(_C, "with_cuda", False):
        return "this build of crs_fast has no CUDA C++ kernels (nvcc was not found when it was built)"
    if device_type != "cuda":
        return f"it runs CUDA tensors and these are on {device_type}"
    return ""


def stream(t: torch.Tensor) -> int:
    """The current CUDA stream of ``t``'s device, as the kernels take it."""
    return torch.cuda.current_stream(t.device).cuda_stream
