"""Parity with OpenRLHF's KL, losses, log-probs, entropy and GAE (installed files, see frameworks.py)."""

import pytest
import torch
from frameworks import openrlhf_experience_methods, openrlhf_models
from helpers import grad_of, make_mask, rand

import crs_fast as cf

utils, loss_mod = openrlhf_models()
experience = openrlhf_experience_methods()


def _mask(B, T, gen):
    m = make_mask(B, T, gen=gen, empty_row=False)
    m[:, 0] = True
    return m


@pytest.mark.parametrize("kind", ["k1", "k2", "k3"])
def test_compute_approx_kl(kind, gen):
    lp, base = rand(4, 50, gen=gen, scale=6.0), rand(4, 50, gen=gen, scale=6.0)
    theirs = utils.compute_approx_kl(lp, base, kl_estimator=kind)
    torch.testing.assert_close(cf.kl_penalty(lp, base, kind=kind, clamp=10.0), theirs, rtol=1e-5, atol=1e-6)
    g_o = grad_of(lambda a: cf.kl_penalty(a, base, kind=kind, clamp=10.0), lp)[0]
    g_t = grad_of(lambda a: utils.compute_approx_kl(a, base, kl_estimator=kind), lp)[0]
    torch.testing.assert_close(g_o, g_t, rtol=1e-5, atol=1e-6)
    # unbiased_gradient without old log-probs: the value of the kind with k2's gradient
    g_u = grad_of(lambda a: utils.compute_approx_kl(a, base, kl_estimator=kind, unbiased_gradient=True), lp)[0]
    g_plus = grad_of(lambda a: cf.kl_penalty(a, base, kind=kind + "+", clamp=10.0), lp)[0]
    torch.testing.assert_close(g_plus, g_u, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("token_level", [True, False])
@pytest.mark.parametrize("dual_clip", [None, 3.0])
def test_policy_loss(token_level, dual_clip, gen):
    B, T = 6, 45
    lp = rand(B, T, gen=gen, scale=0.5)
    old, adv, m = lp + rand(B, T, gen=gen, scale=0.4), rand(B, T, gen=gen), _mask(B, T, gen)
    fn = loss_mod.PolicyLoss(clip_eps_low=0.2, clip_eps_high=0.28, dual_clip=dual_clip, token_level_loss=token_level)
    agg = "token-mean" if token_level else "seq-mean-token-mean"

    def ours(a):
        return cf.ppo_policy_loss(a, old, adv, m, clip_low=0.2, clip_high=0.28, dual_clip=dual_clip, agg=agg)

    loss_t, clip_t, kl_t, _, _ = fn(lp, old, adv, m.float())
    loss_o, stats = ours(lp)
    torch.testing.assert_close(loss_o, loss_t, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(stats["clipfrac"], clip_t, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(stats["approx_kl"], kl_t, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(
        grad_of(lambda a: ours(a)[0], lp)[0],
        grad_of(lambda a: fn(a, old, adv, m.float())[0], lp)[0],
        rtol=1e-5,
        atol=1e-7,
    )


@pytest.mark.parametrize("token_level", [True, False])
@pytest.mark.parametrize("clip", [None, 0.2])
def test_value_loss(token_level, clip, gen):
    B, T = 5, 30
    v = rand(B, T, gen=gen)
    old, ret, m = v + rand(B, T, gen=gen, scale=0.3), rand(B, T, gen=gen), _mask(B, T, gen)
    fn = loss_mod.ValueLoss(clip_eps=clip, token_level_loss=token_level)
    agg = "token-mean" if token_level else "seq-mean-token-mean"
    loss_o, _ = cf.ppo_value_loss(v, old, ret, m, clip=clip, agg=agg)
    torch.testing.assert_close(loss_o, fn(v, old, ret, m.float()), rtol=1e-5, atol=1e-6)
    g_o = grad_of(lambda a: cf.ppo_value_loss(a, old, ret, m, clip=clip, agg=agg)[0], v)[0]
    torch.testing.assert_close(g_o, grad_of(lambda a: fn(a, old, ret, m.float()), v)[0], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("temperature", [1.0, 0.6])
def test_log_probs_and_entropy(temperature, gen):
    z = rand(3, 11, 777, gen=gen, scale=2.0)
    y = torch.randint(0, 777, (3, 11), generator=gen)
    theirs = utils.log_probs_from_logits(z.clone(), y, temperature=temperature)
    torch.testing.assert_close(cf.token_logprobs(z, y, temperature=temperature), theirs, rtol=1e-5, atol=1e-5)
    _, ent = cf.token_logprobs(z, y, entropy=True)
    torch.testing.assert_close(ent, utils.compute_entropy(z), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("gamma,lam", [(1.0, 1.0), (0.99, 0.95)])
def test_gae_with_normalisation(gamma, lam, gen):
    B, T = 8, 60
    r, v, m = rand(B, T, gen=gen), rand(B, T, gen=gen), _mask(B, T, gen)
    adv_t, ret_t = experience["get_advantages_and_returns"](None, v, r, m.float(), gamma, lam)
    adv_o, ret_o = cf.gae(r, v, m, gamma=gamma, lam=lam, mode="openrlhf", whiten=False)
    torch.testing.assert_close(adv_o, adv_t, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ret_o, ret_t, rtol=1e-5, atol=1e-5)
    # OpenRLHF normalises inline in compute_advantages_and_returns (not a callable function):
    # mean over action tokens, biased variance, rsqrt(clamp(var, 1e-8)), applied to every token.
    mf = m.float()
    mean = (adv_t * mf).sum() / mf.sum()
    var = ((adv_t - mean).pow(2) * mf).sum() / mf.sum()
    white_t = (adv_t - mean) * var.clamp(min=1e-8).rsqrt()
    white_o, _ = cf.gae(r, v, m, gamma=gamma, lam=lam, mode="openrlhf")
    torch.testing.assert_close(white_o, white_t, rtol=1e-5, atol=1e-5)


def test_cumulative_returns(gen):
    r, m = rand(5, 40, gen=gen), _mask(5, 40, gen)
    theirs = experience["get_cumulative_returns"](None, r, m.float(), 0.9)
    torch.testing.assert_close(cf.reinforce_returns(r, m, gamma=0.9), theirs, rtol=1e-5, atol=1e-5)


def test_compute_reward(gen):
    B, T = 6, 25
    kl, m, score = rand(B, T, gen=gen), _mask(B, T, gen), rand(B, gen=gen)
    theirs = utils.compute_reward(score, 0.05, kl * m, action_mask=m, reward_clip_range=(-0.5, 0.5))
    torch.testing.assert_close(cf.token_rewards(score, kl, m, beta=0.05, clip=0.5), theirs, rtol=1e-6, atol=1e-6)
