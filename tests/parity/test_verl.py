"""Parity with verl's core_algos and torch_functional (installed from PyPI): same values and
gradients on random inputs, multi-turn masks included."""

import types

import pytest
import torch
from frameworks import require
from helpers import LOW, assert_within_budget, grad_of, make_mask, rand

import crs_fast as cf

core = require("verl.trainer.ppo.core_algos")
verl_F = require("verl.utils.torch_functional")

AGG = ("token-mean", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm")
VERL_KL = {"k1": "kl", "abs": "abs", "k2": "mse", "k3": "low_var_kl", "k1+": "k1+", "k3+": "k3+", "abs+": "abs+"}


class _Cfg(types.SimpleNamespace):
    def get(self, key, default=None):
        return getattr(self, key, default)


def _mask(B, T, gen):
    m = make_mask(B, T, gen=gen, empty_row=False)  # verl divides by zero on empty rows
    m[:, 0] = True
    return m


@pytest.mark.parametrize("gamma,lam", [(1.0, 1.0), (0.99, 0.95), (0.5, 0.0)])
def test_gae(gamma, lam, gen):
    r, v, m = rand(8, 64, gen=gen), rand(8, 64, gen=gen), _mask(8, 64, gen)
    ours = cf.gae(r, v, m, gamma=gamma, lam=lam, mode="verl")
    theirs = core.compute_gae_advantage_return(r, v, m.float(), gamma, lam)
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_masked_whiten(gen):
    x, m = rand(6, 50, gen=gen), _mask(6, 50, gen)
    torch.testing.assert_close(cf.masked_whiten(x, m), verl_F.masked_whiten(x, m.float()), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", sorted(VERL_KL))
def test_kl_penalty(kind, gen):
    lp, ref = rand(4, 33, gen=gen, scale=3.0), rand(4, 33, gen=gen, scale=3.0)
    ours = cf.kl_penalty(lp, ref, kind=kind)
    theirs = core.kl_penalty(lp, ref, VERL_KL[kind])
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)
    g_ours = grad_of(lambda a, b: cf.kl_penalty(a, b, kind=kind), lp, ref)
    g_theirs = grad_of(lambda a, b: core.kl_penalty(a, b, VERL_KL[kind]), lp, ref)
    for a, b in zip(g_ours, g_theirs, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    base = kind.rstrip("+")
    torch.testing.assert_close(
        cf.kl_penalty(lp, ref, kind=base), core.kl_penalty_forward(lp, ref, VERL_KL[base]), rtol=1e-5, atol=1e-6
    )


@pytest.mark.parametrize("agg", AGG)
@pytest.mark.parametrize("clip", [(0.2, 0.2), (0.2, 0.28)])
def test_policy_loss_vanilla(agg, clip, gen):
    B, T = 6, 40
    lp = rand(B, T, gen=gen, scale=0.5)
    old, adv, m = lp + rand(B, T, gen=gen, scale=0.4), rand(B, T, gen=gen), _mask(B, T, gen)
    cfg = _Cfg(clip_ratio=0.2, clip_ratio_low=clip[0], clip_ratio_high=clip[1], clip_ratio_c=3.0, global_batch_info={})

    def theirs(a):
        return core.compute_policy_loss_vanilla(old, a, adv, m.float(), loss_agg_mode=agg, config=cfg)

    def ours(a):
        return cf.ppo_policy_loss(a, old, adv, m, clip_low=clip[0], clip_high=clip[1], dual_clip=3.0, agg=agg)

    loss_t, metrics = theirs(lp)
    loss_o, stats = ours(lp)
    torch.testing.assert_close(loss_o, loss_t, rtol=1e-5, atol=1e-6)
    assert stats["clipfrac"].item() == pytest.approx(metrics["actor/pg_clipfrac"], abs=1e-6)
    assert stats["clipfrac_lower"].item() == pytest.approx(metrics["actor/pg_clipfrac_lower"], abs=1e-6)
    assert stats["approx_kl"].item() == pytest.approx(metrics["actor/ppo_kl"], rel=1e-5, abs=1e-6)
    torch.testing.assert_close(
        grad_of(lambda a: ours(a)[0], lp)[0], grad_of(lambda a: theirs(a)[0], lp)[0], rtol=1e-5, atol=1e-7
    )


@pytest.mark.parametrize("agg", AGG)
def test_value_loss(agg, gen):
    B, T = 5, 37
    v = rand(B, T, gen=gen)
    old, ret, m = v + rand(B, T, gen=gen, scale=0.3), rand(B, T, gen=gen), _mask(B, T, gen)

    def theirs(a):
        return core.compute_value_loss(a, ret, old, m.float(), cliprange_value=0.2, loss_agg_mode=agg)

    loss_t, cf_t = theirs(v)
    loss_o, stats = cf.ppo_value_loss(v, old, ret, m, clip=0.2, agg=agg)
    torch.testing.assert_close(loss_o, loss_t, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(stats["clipfrac"], cf_t, rtol=1e-5, atol=1e-6)
    g_o = grad_of(lambda a: cf.ppo_value_loss(a, old, ret, m, clip=0.2, agg=agg)[0], v)[0]
    torch.testing.assert_close(g_o, grad_of(lambda a: theirs(a)[0], v)[0], rtol=1e-5, atol=1e-7)


def test_agg_loss_modes_through_policy_loss_at_ratio_one(gen):
    """At ratio 1 the policy loss is agg(-A): checks our aggregation against verl's agg_loss."""
    adv, lp, m = rand(7, 30, gen=gen), rand(7, 30, gen=gen), _mask(7, 30, gen)
    for agg in AGG:
        ours, _ = cf.ppo_policy_loss(lp, lp, adv, m, agg=agg)
        torch.testing.assert_close(ours, core.agg_loss(-adv, m.float(), agg), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, *LOW])
def test_logprobs_and_entropy(dtype, gen):
    z = rand(3, 17, 1031, gen=gen, scale=2.0).to(dtype)
    y = torch.randint(0, 1031, (3, 17), generator=gen)
    lp, ent = cf.token_logprobs(z, y, entropy=True)
    theirs_lp, theirs_ent = verl_F.logprobs_from_logits(z, y), verl_F.entropy_from_logits(z)
    if dtype == torch.float32:
        torch.testing.assert_close(lp, theirs_lp, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(ent, theirs_ent, rtol=1e-5, atol=1e-5)
        g = grad_of(lambda a: cf.token_logprobs(a, y, entropy=True), z)[0]
        g_t = grad_of(lambda a: (verl_F.logprobs_from_logits(a, y), verl_F.entropy_from_logits(a)), z)[0]
        torch.testing.assert_close(g, g_t, rtol=1e-5, atol=1e-6)
    else:  # verl computes in the low precision; we accumulate in fp32: compare with the fp64 truth
        o_lp = verl_F.logprobs_from_logits(z.double(), y)
        assert_within_budget(lp, theirs_lp, o_lp, dtype, "logprobs")
        assert_within_budget(ent, theirs_ent, verl_F.entropy_from_logits(z.double()), dtype, "entropy")


@pytest.mark.parametrize("mode", ["grpo", "rloo"])
def test_group_advantages(mode, gen):
    B, T = 24, 10
    scores = rand(B, gen=gen)
    rewards = torch.zeros(B, T)
    rewards[:, -1] = scores
    m = torch.ones(B, T)
    index = (torch.arange(B) // 4).numpy().astype(object)
    index[0] = "solo"  # a singleton group
    fn = core.compute_grpo_outcome_advantage if mode == "grpo" else core.compute_rloo_outcome_advantage
    theirs, _ = fn(rewards, m, index)
    ids = torch.tensor([hash(i) % 10_000 for i in index])
    ours = cf.group_advantages(scores, ids, mode=mode, mask=m)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)
