"""Token log-probs and entropy from logits."""

import math

import pytest
import torch
from helpers import ALL, check, grad_of, rand

import crs_fast as cf
from crs_fast.ops import reference as R

SHAPES = [(1, 1), (1, 7), (5, 769), (3, 5125), (2, 3, 129)]


def _labels(shape, vocab, gen, ignore=True):
    y = torch.randint(0, vocab, shape[:-1], generator=gen)
    if ignore and y.numel() > 1:
        y.view(-1)[0] = -100
    return y


@pytest.mark.parametrize("dtype", ALL)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_token_logprobs_matches_reference(dtype, shape, temperature, gen):
    z = rand(*shape, dtype=dtype, gen=gen, scale=3.0, noncontig=True)
    y = _labels(shape, shape[-1], gen)
    lp, ent = cf.token_logprobs(z, y, temperature=temperature, entropy=True)
    assert lp.dtype == torch.float32 and lp.shape == y.shape and ent.shape == y.shape
    o_lp, o_ent = R.token_logprobs(z.double(), y, temperature=temperature)
    l_lp, l_ent = R.token_logprobs(z, y, temperature=temperature, compute=dtype)
    check(lp, dtype, o_lp, l_lp, "reduction", "logprobs")
    check(ent, dtype, o_ent, l_ent, "reduction", "entropy")
    w = [rand(*y.shape, gen=gen).double(), rand(*y.shape, gen=gen).double()]
    g_k = grad_of(lambda a: cf.token_logprobs(a, y, temperature=temperature, entropy=True), z, weights=w)[0]
    g_o = grad_of(lambda a: R.token_logprobs(a, y, temperature=temperature), z.double(), weights=w)[0]
    g_l = grad_of(lambda a: R.token_logprobs(a, y, temperature=temperature, compute=dtype), z, weights=w)[0]
    assert g_k.dtype == dtype and g_k.shape == z.shape
    check(g_k, dtype, g_o, g_l, "reduction", "grad")


def test_logprobs_only_gradient(gen):
    z, y = rand(4, 300, gen=gen), torch.randint(0, 300, (4,), generator=gen)
    g_k = grad_of(lambda a: cf.token_logprobs(a, y), z)[0]
    g_o = grad_of(lambda a: R.token_logprobs(a, y)[0], z.double())[0]
    check(g_k, torch.float32, g_o, kind="reduction")


@pytest.mark.parametrize("case", ["huge_negative", "wide", "with_neg_inf", "uniform", "one_hot"])
def test_invariants(case, gen):
    V = 1000
    z = rand(16, V, gen=gen)
    if case == "huge_negative":
        z = z - 1e4
    elif case == "wide":
        z = z * 200
    elif case == "with_neg_inf":
        z[:, ::3] = float("-inf")
    elif case == "uniform":
        z = torch.full((16, V), 3.25)
    elif case == "one_hot":
        z = torch.full((16, V), -1e30)
        z[:, 5] = 0.0
    y = torch.randint(0, V, (16,), generator=gen)
    if case == "with_neg_inf":  # a finite column (1 mod 3), below V: (V - 2) // 3 * 3 + 1 < V
        y = torch.randint(0, (V - 2) // 3 + 1, (16,), generator=gen) * 3 + 1
    lp, ent = cf.token_logprobs(z, y, entropy=True)
    assert torch.isfinite(lp).all() and (lp <= 0).all()
    assert (ent >= 0).all() and (ent <= math.log(V)).all()
    if case == "uniform":
        torch.testing.assert_close(ent, torch.full_like(ent, math.log(V)), rtol=1e-6, atol=1e-5)
        torch.testing.assert_close(lp, torch.full_like(lp, -math.log(V)), rtol=1e-6, atol=1e-5)
    if case == "one_hot":
        assert (ent == 0).all()


def test_ignored_labels_give_zero_and_no_gradient(gen):
    z = rand(5, 50, gen=gen).requires_grad_(True)
    y = torch.tensor([3, -100, 7, -100, 0])
    lp, ent = cf.token_logprobs(z, y, entropy=True)
    assert float(lp[1].detach()) == 0.0 and float(ent[3].detach()) == 0.0
    (lp.sum() + ent.sum()).backward()
    assert torch.equal(z.grad[1], torch.zeros(50)) and torch.equal(z.grad[3], torch.zeros(50))


def test_gradcheck(gen):
    z = rand(3, 11, gen=gen).double().requires_grad_(True)
    y = torch.randint(0, 11, (3,), generator=gen)
    assert torch.autograd.gradcheck(lambda a: cf.token_logprobs(a, y, temperature=0.8, entropy=True), (z,))


def test_labels_out_of_range(gen):
    z = rand(3, 10, gen=gen)
    for bad in (10, -1, 1000):
        with pytest.raises(ValueError, match="`labels`"):
            cf.token_logprobs(z, torch.tensor([0, bad, 2]))
    with pytest.raises(ValueError, match="`labels`"):
        cf.token_logprobs(z, torch.tensor([0, 10, 2]), backend="torch")
