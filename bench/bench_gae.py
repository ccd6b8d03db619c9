"""pytest-benchmark of `gae` against every provider: `pytest bench/bench_gae.py`."""

import pytest
from benchlib import PROVIDERS, sizes


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("index", sizes("gae"))
def test_gae(run_case, index, provider):
    run_case("gae", index, provider)
