"""The machine's limits, measured in the same run as the kernels: copy bandwidth (bytes read +
written per second) and matmul throughput (FLOP/s, fp32 and bf16)."""

import torch

from .._timing import median_seconds


def copy_bandwidth(device: str = "cpu", mib: int = 256) -> float:
    """Bytes per second of ``dst.copy_(src)`` on two ``mib``-MiB buffers (read + write)."""
    n = mib * 2**20 // 4
    src = torch.rand(n, device=device)
    dst = torch.empty_like(src)
    t = median_seconds(lambda: dst.copy_(src), warmup=2, reps=10)
    return 2 * src.numel() * 4 / t


def matmul_flops(device: str = "cpu", dtype: torch.dtype = torch.float32, n: int = 2048) -> float:
    """FLOP/s of an n x n x n matmul."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    t = median_seconds(lambda: a @ b, warmup=2, reps=5)
    return 2 * n**3 / t


def measure(device: str = "cpu", quick: bool = False) -> dict[str, float]:
    """All limits, as a dict for the results file."""
    size = 64 if quick else 256
    n = 1024 if quick else 2048
    return {
        "copy_bytes_per_s": copy_bandwidth(device, size),
        "matmul_fp32_flops": matmul_flops(device, torch.float32, n),
        "matmul_bf16_flops": matmul_flops(device, torch.bfloat16, n),
    }
