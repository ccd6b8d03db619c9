"""pytest-benchmark of `ppo_value_loss` against every provider: `pytest bench/bench_ppo_value_loss.py`."""

import pytest
from benchlib import PROVIDERS, sizes


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("index", sizes("ppo_value_loss"))
def test_ppo_value_loss(run_case, index, provider):
    run_case("ppo_value_loss", index, provider)
