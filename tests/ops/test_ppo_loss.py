"""PPO clipped policy and value losses: values, statistics, gradients, aggregation modes."""

import pytest
import torch
from helpers import ALL, check, grad_of, make_mask, rand
from hypothesis import given, settings
from hypothesis import strategies as st

import crs_fast as cf
from crs_fast.ops import reference as R
from crs_fast.ops.ppo_loss import AGG_MODES

SHAPES = [(1, 1), (1, 9), (4, 1), (6, 33), (3, 257)]


def _policy_inputs(B, T, dtype, gen, noncontig=False):
    lp = rand(B, T, dtype=dtype, gen=gen, scale=0.3, noncontig=noncontig)
    old = (lp.float() + rand(B, T, gen=gen, scale=0.3)).to(dtype)
    adv = rand(B, T, dtype=dtype, gen=gen)
    return lp, old, adv, make_mask(B, T, gen=gen)


@pytest.mark.parametrize("agg", AGG_MODES)
@pytest.mark.parametrize("dtype", ALL)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dual_clip", [None, 3.0])
def test_policy_loss_matches_reference(agg, dtype, shape, dual_clip, gen):
    lp, old, adv, m = _policy_inputs(*shape, dtype, gen, noncontig=True)
    kw = dict(clip_low=0.2, clip_high=0.28, dual_clip=dual_clip, agg=agg)
    loss, stats = cf.ppo_policy_loss(lp, old, adv, m, **kw)
    assert loss.dtype == torch.float32 and loss.shape == ()
    o_loss, o_stats = R.ppo_policy_loss(lp.double(), old.double(), adv.double(), m, **kw)
    l_loss, l_stats = R.ppo_policy_loss(lp, old, adv, m, compute=dtype, **kw)
    check(loss, dtype, o_loss, l_loss, "reduction", "loss")
    for key in o_stats:
        check(stats[key], dtype, o_stats[key], l_stats[key], "reduction", key)
    g_k = grad_of(lambda a: cf.ppo_policy_loss(a, old, adv, m, **kw)[0], lp)[0]
    g_o = grad_of(lambda a: R.ppo_policy_loss(a, old.double(), adv.double(), m, **kw)[0], lp.double())[0]
    g_l = grad_of(lambda a: R.ppo_policy_loss(a, old, adv, m, compute=dtype, **kw)[0], lp)[0]
    assert g_k.dtype == dtype
    check(g_k, dtype, g_o, g_l, "reduction", "grad")


@pytest.mark.parametrize("agg", AGG_MODES)
@pytest.mark.parametrize("dtype", ALL)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("clip", [None, 0.2])
def test_value_loss_matches_reference(agg, dtype, shape, clip, gen):
    B, T = shape
    v = rand(B, T, dtype=dtype, gen=gen, noncontig=True)
    old = (v.float() + rand(B, T, gen=gen, scale=0.3)).to(dtype)
    ret = rand(B, T, dtype=dtype, gen=gen)
    m = make_mask(B, T, gen=gen)
    loss, stats = cf.ppo_value_loss(v, old, ret, m, clip=clip, agg=agg)
    o_loss, o_stats = R.ppo_value_loss(v.double(), old.double(), ret.double(), m, clip=clip, agg=agg)
    l_loss, l_stats = R.ppo_value_loss(v, old, ret, m, clip=clip, agg=agg, compute=dtype)
    check(loss, dtype, o_loss, l_loss, "reduction", "loss")
    check(stats["clipfrac"], dtype, o_stats["clipfrac"], l_stats["clipfrac"], "reduction", "clipfrac")
    g_k = grad_of(lambda a: cf.ppo_value_loss(a, old, ret, m, clip=clip, agg=agg)[0], v)[0]
    g_o = grad_of(lambda a: R.ppo_value_loss(a, old.double(), ret.double(), m, clip=clip, agg=agg)[0], v.double())[0]
    g_l = grad_of(lambda a: R.ppo_value_loss(a, old, ret, m, clip=clip, agg=agg, compute=dtype)[0], v)[0]
    check(g_k, dtype, g_o, g_l, "reduction", "grad")


def test_policy_loss_at_ratio_one_is_minus_mean_advantage(gen):
    lp = rand(5, 40, gen=gen)
    adv = rand(5, 40, gen=gen)
    m = make_mask(5, 40, gen=gen)
    loss, stats = cf.ppo_policy_loss(lp, lp.clone(), adv, m, dual_clip=3.0)
    expected = -(adv.double() * m).sum() / m.sum()
    assert abs(float(loss) - float(expected)) < 1e-5
    assert float(stats["clipfrac"]) == 0.0 and float(stats["approx_kl"]) == 0.0


def test_all_masked_gives_zero_not_nan(gen):
    lp, old, adv, _ = _policy_inputs(3, 8, torch.float32, gen)
    m = torch.zeros(3, 8, dtype=torch.bool)
    lp.requires_grad_(True)
    for agg in AGG_MODES:
        loss, stats = cf.ppo_policy_loss(lp, old, adv, m, agg=agg)
        loss.backward()
        assert float(loss.detach()) == 0.0 and all(float(s) == 0.0 for s in stats.values())
        assert torch.equal(lp.grad, torch.zeros_like(lp))
        vloss, _ = cf.ppo_value_loss(lp, old, adv, m, agg=agg)
        assert float(vloss) == 0.0


def test_dual_clip_bounds_negative_advantage_loss():
    lp = torch.tensor([[5.0]])  # ratio e^5 ~ 148 with A < 0 -> loss capped at -c*A
    old = torch.zeros(1, 1)
    adv = torch.tensor([[-1.0]])
    m = torch.ones(1, 1, dtype=torch.bool)
    loss, stats = cf.ppo_policy_loss(lp, old, adv, m, dual_clip=3.0)
    assert float(loss) == pytest.approx(3.0) and float(stats["clipfrac_lower"]) == 1.0
    loss_nodual, _ = cf.ppo_policy_loss(lp, old, adv, m)
    assert float(loss_nodual) == pytest.approx(float(torch.exp(torch.tensor(5.0))), rel=1e-5)


@pytest.mark.parametrize("agg", AGG_MODES)
def test_policy_gradcheck(agg, gen):
    lp, old, adv, m = (t.double() if t.is_floating_point() else t for t in _policy_inputs(3, 7, torch.float32, gen))
    lp.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a: cf.ppo_policy_loss(a, old, adv, m, dual_clip=2.0, agg=agg)[0], (lp,))


@pytest.mark.parametrize("agg", AGG_MODES)
def test_value_gradcheck(agg, gen):
    v = rand(3, 7, gen=gen).double().requires_grad_(True)
    old, ret = rand(3, 7, gen=gen).double(), rand(3, 7, gen=gen).double()
    m = make_mask(3, 7, gen=gen)
    assert torch.autograd.gradcheck(lambda a: cf.ppo_value_loss(a, old, ret, m, clip=0.3, agg=agg)[0], (v,))


@settings(max_examples=50, deadline=None)
@given(
    B=st.integers(1, 5),
    T=st.integers(1, 50),
    agg=st.sampled_from(AGG_MODES),
    clip_low=st.floats(0.0, 0.9),
    clip_high=st.floats(0.0, 5.0),
    dual=st.one_of(st.none(), st.floats(1.01, 10.0)),
    scale=st.floats(0.01, 30.0),
    seed=st.integers(0, 2**31 - 1),
)
def test_policy_fuzz(B, T, agg, clip_low, clip_high, dual, scale, seed):
    g = torch.Generator().manual_seed(seed)
    lp, old, adv = rand(B, T, gen=g, scale=scale), rand(B, T, gen=g, scale=scale), rand(B, T, gen=g)
    m = torch.rand(B, T, generator=g) > 0.3
    kw = dict(clip_low=clip_low, clip_high=clip_high, dual_clip=dual, agg=agg)
    loss, stats = cf.ppo_policy_loss(lp, old, adv, m, **kw)
    o_loss, o_stats = R.ppo_policy_loss(lp.double(), old.double(), adv.double(), m, **kw)
    check(loss, torch.float32, o_loss, kind="reduction", what="loss")
    for key in o_stats:
        check(stats[key], torch.float32, o_stats[key], kind="reduction", what=key)


@settings(max_examples=40, deadline=None)
@given(
    B=st.integers(1, 5),
    T=st.integers(1, 50),
    agg=st.sampled_from(AGG_MODES),
    clip=st.one_of(st.none(), st.floats(0.0, 2.0)),
    seed=st.integers(0, 2**31 - 1),
)
def test_value_fuzz(B, T, agg, clip, seed):
    g = torch.Generator().manual_seed(seed)
    v, old, ret = rand(B, T, gen=g), rand(B, T, gen=g), rand(B, T, gen=g)
    m = torch.rand(B, T, generator=g) > 0.3
    loss, stats = cf.ppo_value_loss(v, old, ret, m, clip=clip, agg=agg)
    o_loss, o_stats = R.ppo_value_loss(v.double(), old.double(), ret.double(), m, clip=clip, agg=agg)
    check(loss, torch.float32, o_loss, kind="reduction")
    check(stats["clipfrac"], torch.float32, o_stats["clipfrac"], kind="reduction")
