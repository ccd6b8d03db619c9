"""crs_fast.integrations.openrlhf: patched functions give OpenRLHF's values and gradients."""

import pytest
import torch
from frameworks import import_openrlhf
from helpers import grad_of, make_mask, rand

import crs_fast.integrations.openrlhf as co

utils, loss_mod, em = import_openrlhf()
ORIG = {n: getattr(utils, n) for n in ("compute_approx_kl", "log_probs_from_logits", "compute_entropy")}
ORIG_POLICY, ORIG_VALUE = loss_mod.PolicyLoss.forward, loss_mod.ValueLoss.forward
ORIG_GAE = em.RemoteExperienceMaker.get_advantages_and_returns
ORIG_RET = em.RemoteExperienceMaker.get_cumulative_returns


@pytest.fixture
def patched():
    co.patch()
    yield
    co.unpatch()


def _mask(B, T, gen):
    m = make_mask(B, T, gen=gen, empty_row=False)
    m[:, 0] = True
    return m.float()


def test_patch_unpatch():
    assert co.patch() == co.patch()
    assert utils.compute_approx_kl is co.compute_approx_kl
    assert loss_mod.PolicyLoss.forward is co.policy_loss_forward
    assert em.RemoteExperienceMaker.get_advantages_and_returns is co.get_advantages_and_returns
    co.unpatch()
    assert all(getattr(utils, n) is f for n, f in ORIG.items())
    assert loss_mod.PolicyLoss.forward is ORIG_POLICY and loss_mod.ValueLoss.forward is ORIG_VALUE
    assert em.RemoteExperienceMaker.get_advantages_and_returns is ORIG_GAE


@pytest.mark.parametrize("kind", ["k1", "k2", "k3"])
@pytest.mark.parametrize("unbiased", [False, True])
@pytest.mark.parametrize("with_old", [False, True])
def test_compute_approx_kl(patched, kind, unbiased, with_old, gen):
    lp, base, old = rand(4, 40, gen=gen, scale=8.0), rand(4, 40, gen=gen, scale=8.0), rand(4, 40, gen=gen)
    old = old if with_old else None
    new = utils.compute_approx_kl(lp, base, old, kind, unbiased)
    ref = ORIG["compute_approx_kl"](lp, base, old, kind, unbiased)
    torch.testing.assert_close(new, ref, rtol=1e-5, atol=1e-6)
    g_new = grad_of(lambda a: utils.compute_approx_kl(a, base, old, kind, unbiased), lp)[0]
    g_old = grad_of(lambda a: ORIG["compute_approx_kl"](a, base, old, kind, unbiased), lp)[0]
    torch.testing.assert_close(g_new, g_old, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("token_level", [True, False])
@pytest.mark.parametrize("dual_clip", [None, 3.0])
@pytest.mark.parametrize("global_args", [{}, {"dp_size": 2, "batch_num_tokens": 200, "global_batch_size": 12}])
def test_policy_and_value_loss(patched, token_level, dual_clip, global_args, gen):
    B, T = 6, 30
    lp = rand(B, T, gen=gen, scale=0.5)
    old, adv, m = lp + rand(B, T, gen=gen, scale=0.4), rand(B, T, gen=gen), _mask(B, T, gen)
    fn = loss_mod.PolicyLoss(clip_eps_low=0.2, clip_eps_high=0.28, dual_clip=dual_clip, token_level_loss=token_level)
    new, ref = fn(lp, old, adv, m, **global_args), ORIG_POLICY(fn, lp, old, adv, m, **global_args)
    for a, b in zip(new[:3], ref[:3], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    g_new = grad_of(lambda a: fn(a, old, adv, m, **global_args)[0], lp)[0]
    g_old = grad_of(lambda a: ORIG_POLICY(fn, a, old, adv, m, **global_args)[0], lp)[0]
    torch.testing.assert_close(g_new, g_old, rtol=1e-5, atol=1e-7)
    vfn = loss_mod.ValueLoss(clip_eps=0.2, token_level_loss=token_level)
    ret = rand(B, T, gen=gen)
    torch.testing.assert_close(
        vfn(lp, old, ret, m, **global_args), ORIG_VALUE(vfn, lp, old, ret, m, **global_args), rtol=1e-5, atol=1e-6
    )


def test_gspo_falls_back(patched, gen):
    lp, old, adv, m = rand(3, 9, gen=gen), rand(3, 9, gen=gen), rand(3, 9, gen=gen), _mask(3, 9, gen)
    fn = loss_mod.PolicyLoss(policy_loss_type="gspo")
    torch.testing.assert_close(fn(lp, old, adv, m)[0], ORIG_POLICY(fn, lp, old, adv, m)[0])


def test_log_probs_entropy_and_advantages(patched, gen):
    z, y = rand(3, 8, 211, gen=gen, scale=2.0), torch.randint(0, 211, (3, 8), generator=gen)
    z1, z2 = z.clone(), z.clone()
    torch.testing.assert_close(
        utils.log_probs_from_logits(z1, y, 0.7), ORIG["log_probs_from_logits"](z2, y, 0.7), rtol=1e-5, atol=1e-5
    )
    torch.testing.assert_close(z1, z2)  # the in-place temperature division is kept
    torch.testing.assert_close(utils.compute_entropy(z), ORIG["compute_entropy"](z), rtol=1e-5, atol=1e-5)
    r, v, m = rand(5, 30, gen=gen), rand(5, 30, gen=gen), _mask(5, 30, gen)
    for a, b in zip(
        em.RemoteExperienceMaker.get_advantages_and_returns(None, v, r, m, 0.99, 0.95),
        ORIG_GAE(None, v, r, m, 0.99, 0.95),
        strict=True,
    ):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(
        em.RemoteExperienceMaker.get_cumulative_returns(None, r, m, 0.9),
        ORIG_RET(None, r, m, 0.9),
        rtol=1e-5,
        atol=1e-5,
    )
