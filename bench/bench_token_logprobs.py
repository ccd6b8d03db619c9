"""pytest-benchmark of `token_logprobs` against every provider: `pytest bench/bench_token_logprobs.py`."""

import pytest
from benchlib import PROVIDERS, sizes


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("index", sizes("token_logprobs"))
def test_token_logprobs(run_case, index, provider):
    run_case("token_logprobs", index, provider)
