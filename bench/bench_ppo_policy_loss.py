"""pytest-benchmark of `ppo_policy_loss` against every provider: `pytest bench/bench_ppo_policy_loss.py`."""

import pytest
from benchlib import PROVIDERS, sizes


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("index", sizes("ppo_policy_loss"))
def test_ppo_policy_loss(run_case, index, provider):
    run_case("ppo_policy_loss", index, provider)
