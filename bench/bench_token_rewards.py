"""pytest-benchmark of `token_rewards` against every provider: `pytest bench/bench_token_rewards.py`."""

import pytest
from benchlib import PROVIDERS, sizes


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("index", sizes("token_rewards"))
def test_token_rewards(run_case, index, provider):
    run_case("token_rewards", index, provider)
