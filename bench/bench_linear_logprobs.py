"""pytest-benchmark of `linear_logprobs` against every provider: `pytest bench/bench_linear_logprobs.py`."""

import pytest
from benchlib import PROVIDERS, sizes


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("index", sizes("linear_logprobs"))
def test_linear_logprobs(run_case, index, provider):
    run_case("linear_logprobs", index, provider)
