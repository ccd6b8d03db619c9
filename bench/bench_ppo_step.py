"""pytest-benchmark of `ppo_step` against every provider: `pytest bench/bench_ppo_step.py`."""

import pytest
from benchlib import PROVIDERS, sizes


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("index", sizes("ppo_step"))
def test_ppo_step(run_case, index, provider):
    run_case("ppo_step", index, provider)
