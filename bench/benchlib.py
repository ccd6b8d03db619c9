"""pytest-benchmark glue: ``pytest bench/bench_<op>.py`` times each provider of each size of an op
(groups per shape; bytes, FLOPs and size in ``extra_info``). CRS_FAST_BENCH_QUICK=1 uses the
quick shapes; CRS_FAST_BENCH_DEVICE=cuda the GPU ones. The cases are crs_fast.benchmarks.cases,
the same the runner (``python -m bench.run``) uses."""

import functools
import os

import pytest

from crs_fast.benchmarks.cases import all_cases

QUICK = os.environ.get("CRS_FAST_BENCH_QUICK") == "1"
DEVICE = os.environ.get("CRS_FAST_BENCH_DEVICE", "cpu")
PROVIDERS = ["crs_fast", "reference", "torch.compile", "verl", "openrlhf", "trl", "liger"]


def sizes(op: str) -> range:
    """Indices of the op's sizes."""
    return range(len(all_cases(DEVICE, QUICK, [op])))


@functools.cache
def _case(op: str, index: int):
    return all_cases(DEVICE, QUICK, [op])[index]()


@pytest.fixture
def run_case(benchmark):
    """Benchmark one provider of one case; skip (with the reason) where it cannot run."""

    def run(op: str, index: int, provider: str) -> None:
        case = _case(op, index)
        if provider not in case.providers:
            pytest.skip(case.unavailable.get(provider, f"{provider} has no implementation of {op}"))
        benchmark.group = f"{op} {case.shape}"
        benchmark.extra_info.update(
            op=op, shape=case.shape, size=case.size, bytes=case.bytes, flops=case.flops, provider=provider
        )
        benchmark.pedantic(case.providers[provider], warmup_rounds=1, rounds=5 if QUICK else 20, iterations=1)

    return run
