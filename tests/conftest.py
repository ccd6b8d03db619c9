import os
import secrets

import pytest
import torch


@pytest.fixture
def gen() -> torch.Generator:
    """A generator with a fresh random seed per test; the seed is printed (shown on failure) and
    ``CRS_FAST_TEST_SEED=<seed>`` replays it."""
    seed = int(os.environ.get("CRS_FAST_TEST_SEED") or secrets.randbelow(2**31))
    print(f"seed={seed}")
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)
