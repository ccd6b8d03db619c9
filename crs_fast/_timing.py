"""Wall-clock timing and CPU peak-memory helpers shared by the demo and the benchmarks."""

import statistics
import time
from collections.abc import Callable

import torch


def median_seconds(fn: Callable[[], object], *, warmup: int = 2, reps: int = 10) -> float:
    """Median wall time of ``fn()`` over ``reps`` runs after ``warmup`` runs (CUDA synchronised)."""
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def peak_rss_extra_bytes(fn: Callable[[], object]) -> int:
    """Peak resident memory above the current level while ``fn()`` runs (Linux: resets the
    high-water mark through /proc/self/clear_refs). Run it in a fresh process per case."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    base = _status_kib("VmRSS")
    fn()
    return max(0, _status_kib("VmHWM") - base) * 1024
