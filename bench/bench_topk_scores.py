"""pytest-benchmark of `topk_scores` against every provider: `pytest bench/bench_topk_scores.py`."""

import pytest
from benchlib import PROVIDERS, sizes


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("index", sizes("topk_scores"))
def test_topk_scores(run_case, index, provider):
    run_case("topk_scores", index, provider)
