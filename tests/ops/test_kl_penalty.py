"""KL penalty estimators: values, gradients (incl. straight-through), clamps."""

import pytest
import torch
from helpers import ALL, LOW, check, grad_of, rand
from hypothesis import given, settings
from hypothesis import strategies as st

import crs_fast as cf
from crs_fast.ops import reference as R
from crs_fast.ops.kl_penalty import KL_KINDS

SHAPES = [(1, 1), (3, 1), (5, 33), (2, 3, 17)]


@pytest.mark.parametrize("kind", KL_KINDS)
@pytest.mark.parametrize("dtype", ALL)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("clamp", [None, 10.0])
def test_kl_matches_reference(kind, dtype, shape, clamp, gen):
    lp = rand(*shape, dtype=dtype, gen=gen, scale=4.0, noncontig=True)
    ref = rand(*shape, dtype=dtype, gen=gen, scale=4.0)
    out = cf.kl_penalty(lp, ref, kind=kind, clamp=clamp)
    assert out.dtype == dtype and out.shape == lp.shape
    oracle = R.kl_penalty(lp.double(), ref.double(), kind=kind, clamp=clamp)
    check(out, dtype, oracle, R.kl_penalty(lp, ref, kind=kind, clamp=clamp, compute=dtype))
    g_k = grad_of(lambda a, b: cf.kl_penalty(a, b, kind=kind, clamp=clamp), lp, ref)
    g_o = grad_of(lambda a, b: R.kl_penalty(a, b, kind=kind, clamp=clamp), lp.double(), ref.double())
    g_l = grad_of(lambda a, b: R.kl_penalty(a, b, kind=kind, clamp=clamp, compute=dtype), lp, ref)
    for k, o, lo in zip(g_k, g_o, g_l, strict=True):
        check(k, dtype, o, lo, what="grad")


def test_kl_extreme_values_are_clamped():
    lp = torch.tensor([-60.0, -25.0, -12.0, 0.0, 12.0, 25.0, 60.0])
    ref = torch.zeros_like(lp)
    k3 = cf.kl_penalty(lp, ref, kind="k3")
    assert torch.isfinite(k3).all() and k3.max() <= 10 and k3.min() >= 0
    assert float(k3[3]) == 0.0
    for kind in ("k1", "k2", "abs"):
        clamped = cf.kl_penalty(lp, ref, kind=kind, clamp=10.0)
        assert clamped.abs().max() <= 10


@pytest.mark.parametrize("kind", ["k1+", "k3+", "abs+"])
def test_straight_through_gradient_is_k2(kind, gen):
    lp, ref = rand(4, 9, gen=gen), rand(4, 9, gen=gen)
    g_st = grad_of(lambda a: cf.kl_penalty(a, ref, kind=kind), lp)[0]
    g_k2 = grad_of(lambda a: cf.kl_penalty(a, ref, kind="k2"), lp)[0]
    torch.testing.assert_close(g_st, g_k2)
    torch.testing.assert_close(cf.kl_penalty(lp, ref, kind=kind), cf.kl_penalty(lp, ref, kind=kind[:-1]))


@pytest.mark.parametrize("kind", [k for k in KL_KINDS if not k.endswith("+")])
def test_kl_gradcheck(kind, gen):
    """Finite differences; the "+" kinds' gradient is by design not their value's derivative."""
    lp = rand(3, 5, gen=gen).double().requires_grad_(True)
    ref = rand(3, 5, gen=gen).double().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, b: cf.kl_penalty(a, b, kind=kind), (lp, ref))


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 64),
    kind=st.sampled_from(KL_KINDS),
    scale=st.floats(0.01, 40.0),
    clamp=st.one_of(st.none(), st.floats(0.1, 20.0)),
    seed=st.integers(0, 2**31 - 1),
)
def test_kl_fuzz(n, kind, scale, clamp, seed):
    g = torch.Generator().manual_seed(seed)
    lp, ref = rand(n, gen=g, scale=scale), rand(n, gen=g, scale=scale)
    out = cf.kl_penalty(lp, ref, kind=kind, clamp=clamp)
    oracle = R.kl_penalty(lp.double(), ref.double(), kind=kind, clamp=clamp)
    check(out, torch.float32, oracle)


@pytest.mark.parametrize("dtype", LOW)
def test_kl_low_precision_grad_dtype(dtype, gen):
    lp = rand(3, 4, dtype=dtype, gen=gen).requires_grad_(True)
    cf.kl_penalty(lp, rand(3, 4, dtype=dtype, gen=gen), kind="k3").sum().backward()
    assert lp.grad.dtype == dtype
