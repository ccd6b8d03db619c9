"""Token rewards with the KL penalty, and the KL coefficient controllers."""

import pytest
import torch
from helpers import ALL, check, make_mask, rand

import crs_fast as cf
from crs_fast.ops import reference as R


@pytest.mark.parametrize("dtype", ALL)
@pytest.mark.parametrize("shape", [(1, 1), (4, 1), (6, 33), (3, 300)])
@pytest.mark.parametrize("clip", [None, 0.5, (-0.2, 1.0)])
def test_token_rewards_matches_reference(dtype, shape, clip, gen):
    B, T = shape
    scores = rand(B, dtype=dtype, gen=gen)
    kl = rand(B, T, dtype=dtype, gen=gen, noncontig=True)
    m = make_mask(B, T, gen=gen)
    out = cf.token_rewards(scores, kl, m, beta=0.05, clip=clip)
    bounds = None if clip is None else (clip if isinstance(clip, tuple) else (-clip, clip))
    oracle = R.token_rewards(scores.double(), kl.double(), m, beta=0.05, clip=bounds)
    check(out, dtype, oracle, R.token_rewards(scores, kl, m, beta=0.05, clip=bounds, compute=dtype))


def test_score_lands_on_last_valid_token():
    kl = torch.zeros(3, 6)
    m = torch.tensor([[1, 1, 1, 0, 0, 0], [1, 0, 1, 1, 0, 1], [0, 0, 0, 0, 0, 0]], dtype=torch.bool)
    out = cf.token_rewards(torch.tensor([1.0, 2.0, 3.0]), kl, m, beta=0.1)
    expected = torch.zeros(3, 6)
    expected[0, 2], expected[1, 5] = 1.0, 2.0
    torch.testing.assert_close(out, expected)


def test_adaptive_controller_moves_towards_target():
    ctl = cf.AdaptiveKLController(0.1, target=6.0, horizon=10000)
    assert ctl.update(12.0, n_steps=256) == pytest.approx(0.1 * (1 + 0.2 * 256 / 10000))
    ctl = cf.AdaptiveKLController(0.1, target=6.0, horizon=10000)
    assert ctl.update(3.0, n_steps=256) < 0.1
    assert cf.FixedKLController(0.3).update(100.0, 5) == 0.3
    with pytest.raises(ValueError, match="target"):
        cf.AdaptiveKLController(0.1, target=0.0, horizon=1)
