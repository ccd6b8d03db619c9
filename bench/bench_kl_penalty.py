"""pytest-benchmark of `kl_penalty` against every provider: `pytest bench/bench_kl_penalty.py`."""

import pytest
from benchlib import PROVIDERS, sizes


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("index", sizes("kl_penalty"))
def test_kl_penalty(run_case, index, provider):
    run_case("kl_penalty", index, provider)
