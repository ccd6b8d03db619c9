"""GAE (three conventions), masked whitening, REINFORCE returns and group advantages."""

import pytest
import torch
from helpers import ALL, LOW, check, make_mask, rand
from hypothesis import given, settings
from hypothesis import strategies as st

import crs_fast as cf
from crs_fast.ops import reference as R

SHAPES = [(1, 1), (1, 7), (3, 1), (5, 33), (4, 300)]
MODES = ("verl", "trl", "openrlhf")


def _inputs(B, T, dtype, gen, noncontig=False):
    r = rand(B, T, dtype=dtype, gen=gen, noncontig=noncontig)
    v = rand(B, T, dtype=dtype, gen=gen, noncontig=noncontig)
    return r, v, make_mask(B, T, gen=gen)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", ALL)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("whiten", [True, False])
def test_gae_matches_reference(mode, dtype, shape, whiten, gen):
    r, v, m = _inputs(*shape, dtype, gen, noncontig=shape[1] > 1)
    gamma, lam = float(torch.rand((), generator=gen)), float(torch.rand((), generator=gen))
    adv, ret = cf.gae(r, v, m, gamma=gamma, lam=lam, mode=mode, whiten=whiten, backend="cpu")
    assert adv.dtype == dtype and ret.dtype == dtype and adv.shape == r.shape
    o_adv, o_ret = R.gae(r.double(), v.double(), m, gamma=gamma, lam=lam, mode=mode, whiten=whiten)
    l_adv, l_ret = R.gae(r, v, m, gamma=gamma, lam=lam, mode=mode, whiten=whiten, compute=dtype)
    check(ret, dtype, o_ret, l_ret, "reduction", "returns")
    check(adv, dtype, o_adv, l_adv, "reduction", "advantages")


def test_gae_gamma_lam_one_is_reverse_cumsum(gen):
    r, v = rand(6, 50, gen=gen), rand(6, 50, gen=gen)
    m = torch.ones(6, 50, dtype=torch.bool)
    adv, ret = cf.gae(r, v, m, gamma=1.0, lam=1.0, whiten=False)
    expected = r.double().flip(1).cumsum(1).flip(1) - v.double()
    torch.testing.assert_close(adv.double(), expected, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(ret.double(), expected + v.double(), rtol=1e-5, atol=1e-4)


def test_gae_verl_skips_observation_tokens(gen):
    """A masked user turn inside the response changes nothing for the system tokens around it
    in verl mode: same advantages as the sequence with the user tokens cut out."""
    r, v = rand(1, 10, gen=gen), rand(1, 10, gen=gen)
    m = torch.ones(1, 10, dtype=torch.bool)
    m[0, 3:6] = False
    adv, _ = cf.gae(r, v, m, gamma=0.95, lam=0.9, whiten=False)
    keep = m[0]
    cut_adv, _ = cf.gae(
        r[:, keep], v[:, keep], torch.ones(1, int(keep.sum()), dtype=torch.bool), gamma=0.95, lam=0.9, whiten=False
    )
    torch.testing.assert_close(adv[:, keep], cut_adv)


def test_gae_all_masked_gives_finite(gen):
    r, v = rand(3, 9, gen=gen), rand(3, 9, gen=gen)
    m = torch.zeros(3, 9, dtype=torch.bool)
    for mode in MODES:
        adv, ret = cf.gae(r, v, m, gamma=0.9, lam=0.9, mode=mode)
        assert torch.isfinite(adv).all() and torch.isfinite(ret).all()


@settings(max_examples=40, deadline=None)
@given(
    B=st.integers(1, 6),
    T=st.integers(1, 40),
    gamma=st.floats(0, 1),
    lam=st.floats(0, 1),
    mode=st.sampled_from(MODES),
    whiten=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_gae_fuzz(B, T, gamma, lam, mode, whiten, seed):
    g = torch.Generator().manual_seed(seed)
    r, v = rand(B, T, gen=g, scale=3.0), rand(B, T, gen=g, scale=3.0)
    m = torch.rand(B, T, generator=g) > 0.4
    adv, ret = cf.gae(r, v, m, gamma=gamma, lam=lam, mode=mode, whiten=whiten)
    o_adv, o_ret = R.gae(r.double(), v.double(), m, gamma=gamma, lam=lam, mode=mode, whiten=whiten)
    check(ret, torch.float32, o_ret, kind="reduction", what="returns")
    if whiten and int(m.sum()) <= 2:  # whitening 1-2 tokens amplifies rounding by 1/sqrt(1e-8)
        return
    check(adv, torch.float32, o_adv, kind="reduction", what="advantages")


@pytest.mark.parametrize("dtype", ALL)
@pytest.mark.parametrize("shift_mean", [True, False])
def test_masked_whiten(dtype, shift_mean, gen):
    x, m = rand(7, 29, dtype=dtype, gen=gen, noncontig=True), make_mask(7, 29, gen=gen)
    out = cf.masked_whiten(x, m, shift_mean=shift_mean)
    oracle = R.masked_whiten(x.double(), m, shift_mean=shift_mean)
    check(out, dtype, oracle, R.masked_whiten(x, m, shift_mean=shift_mean, compute=dtype), "reduction")
    sel = out[m].double()
    if shift_mean:
        assert abs(float(sel.mean())) < 1e-2 and abs(float(sel.std()) - 1) < 5e-2


@pytest.mark.parametrize("dtype", ALL)
@pytest.mark.parametrize("shape", SHAPES)
def test_reinforce_returns(dtype, shape, gen):
    r, m = rand(*shape, dtype=dtype, gen=gen), make_mask(*shape, gen=gen)
    out = cf.reinforce_returns(r, m, gamma=0.97)
    oracle = R.reinforce_returns(r.double(), m, gamma=0.97)
    check(out, dtype, oracle, R.reinforce_returns(r, m, gamma=0.97, compute=dtype), "reduction")


@pytest.mark.parametrize("mode", ["grpo", "rloo"])
@pytest.mark.parametrize("dtype", ALL)
@pytest.mark.parametrize("norm_by_std", [True, False])
def test_group_advantages(mode, dtype, norm_by_std, gen):
    s = rand(37, dtype=dtype, gen=gen)
    g = torch.randint(0, 9, (37,), generator=gen)
    g[0] = 100  # a singleton group
    out = cf.group_advantages(s, g, mode=mode, norm_by_std=norm_by_std)
    oracle = R.group_advantages(s.double(), g, mode=mode, norm_by_std=norm_by_std)
    check(out, dtype, oracle, R.group_advantages(s, g, mode=mode, norm_by_std=norm_by_std, compute=dtype), "reduction")
    m = make_mask(37, 11, gen=gen)
    tok = cf.group_advantages(s, g, mode=mode, norm_by_std=norm_by_std, mask=m)
    assert tok.shape == (37, 11)
    torch.testing.assert_close(tok, out[:, None] * m.to(out.dtype))


def test_group_rloo_is_leave_one_out(gen):
    s = rand(12, gen=gen).double()
    g = torch.arange(12) // 4
    out = cf.group_advantages(s, g, mode="rloo")
    for i in range(12):
        others = [j for j in range(12) if g[j] == g[i] and j != i]
        assert abs(float(out[i]) - float(s[i] - s[others].mean())) < 1e-12


@pytest.mark.parametrize("dtype", LOW)
def test_gae_low_precision_outputs_keep_dtype(dtype, gen):
    r, v, m = _inputs(4, 16, dtype, gen)
    adv, ret = cf.gae(r, v, m, gamma=1.0, lam=1.0)
    assert adv.dtype == dtype and ret.dtype == dtype
