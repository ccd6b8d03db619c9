"""Log-probs and entropy from hidden states and the LM head, without [N, V] logits."""

import importlib

import pytest
import torch
from helpers import ALL, check, grad_of, rand

import crs_fast as cf
from crs_fast.ops import reference as R

CASES = [  # (leading shape, H, V, chunk)
    ((1,), 1, 1, None),
    ((7,), 33, 769, 256),
    ((2, 3), 16, 5125, 1000),
]


@pytest.mark.parametrize("dtype", ALL)
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("temperature", [1.0, 1.3])
def test_linear_logprobs_matches_reference(dtype, case, temperature, gen):
    lead, H, V, chunk = case
    h = rand(*lead, H, dtype=dtype, gen=gen, noncontig=True)
    w = rand(V, H, dtype=dtype, gen=gen, scale=H**-0.5)
    y = torch.randint(0, V, lead, generator=gen)
    if y.numel() > 1:
        y.view(-1)[-1] = -100
    kw = dict(temperature=temperature)
    lp, ent = cf.linear_logprobs(h, w, y, entropy=True, chunk_size=chunk, **kw)
    assert lp.shape == y.shape and lp.dtype == torch.float32
    o_lp, o_ent = R.linear_logprobs(h.double(), w.double(), y, **kw)
    l_lp, l_ent = R.linear_logprobs(h, w, y, compute=dtype, **kw)
    check(lp, dtype, o_lp, l_lp, "reduction", "logprobs")
    check(ent, dtype, o_ent, l_ent, "reduction", "entropy")
    wts = [rand(*lead, gen=gen).double(), rand(*lead, gen=gen).double()]
    g_k = grad_of(lambda a, b: cf.linear_logprobs(a, b, y, entropy=True, chunk_size=chunk, **kw), h, w, weights=wts)
    g_o = grad_of(lambda a, b: R.linear_logprobs(a, b, y, **kw), h.double(), w.double(), weights=wts)
    g_l = grad_of(lambda a, b: R.linear_logprobs(a, b, y, compute=dtype, **kw), h, w, weights=wts)
    for k, o, lo, name in zip(g_k, g_o, g_l, ("d hidden", "d weight"), strict=True):
        assert k.dtype == dtype
        check(k, dtype, o, lo, "reduction", name)


def test_one_column_blocks(gen):
    h, w = rand(9, 65, gen=gen), rand(300, 65, gen=gen, scale=0.1)
    y = torch.randint(0, 300, (9,), generator=gen)
    lp, ent = cf.linear_logprobs(h, w, y, entropy=True, chunk_size=1)
    o_lp, o_ent = R.linear_logprobs(h.double(), w.double(), y)
    check(lp, torch.float32, o_lp, kind="reduction")
    check(ent, torch.float32, o_ent, kind="reduction")


def test_matches_token_logprobs(gen):
    h, w = rand(12, 40, gen=gen), rand(3000, 40, gen=gen)
    y = torch.randint(0, 3000, (12,), generator=gen)
    a = cf.linear_logprobs(h, w, y, entropy=True, chunk_size=512)
    b = cf.token_logprobs(h @ w.T, y, entropy=True)
    for x, z in zip(a, b, strict=True):
        torch.testing.assert_close(x, z, rtol=1e-4, atol=1e-4)


def test_gradcheck(gen):
    h = rand(3, 5, gen=gen).double().requires_grad_(True)
    w = rand(13, 5, gen=gen).double().requires_grad_(True)
    y = torch.randint(0, 13, (3,), generator=gen)
    assert torch.autograd.gradcheck(lambda a, b: cf.linear_logprobs(a, b, y, entropy=True, chunk_size=4), (h, w))


def test_invariants_with_large_logits(gen):
    h, w = rand(8, 16, gen=gen) * 30, rand(2000, 16, gen=gen) * 30
    y = torch.randint(0, 2000, (8,), generator=gen)
    lp, ent = cf.linear_logprobs(h, w, y, entropy=True, chunk_size=300)
    assert (lp <= 0).all() and (ent >= 0).all() and (ent <= torch.log(torch.tensor(2000.0))).all()


@pytest.mark.parametrize("frozen", ["hidden", "weight"])
def test_one_input_frozen_gets_no_gradient_and_the_other_the_same(frozen, gen):
    """With one input not requiring grad its gradient is skipped (None), the other's equals the
    gradient computed with both; the backward op returns zeros for a skipped gradient."""
    h, w = rand(11, 24, gen=gen), rand(700, 24, gen=gen, scale=0.2)
    y = torch.randint(0, 700, (11,), generator=gen)
    y[3] = -100
    gl, ge = rand(11, gen=gen), rand(11, gen=gen)

    def grads(need_h: bool, need_w: bool):
        a, b = h.clone().requires_grad_(need_h), w.clone().requires_grad_(need_w)
        lp, ent = cf.linear_logprobs(a, b, y, entropy=True, chunk_size=128)
        ((lp * gl).sum() + (ent * ge).sum()).backward()
        return a.grad, b.grad

    dh, dw = grads(True, True)
    if frozen == "hidden":
        none, got, want = *grads(False, True), dw
    else:
        got, none, want = *grads(True, False), dh
    assert none is None
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    LL = importlib.import_module("crs_fast.ops.linear_logprobs")  # the module, not the re-exported function
    lp, ent, lse = LL._llp_op(h, w, y, 1.0, -100, 128, "cpu")
    zh, zw = LL._llp_bwd_op(gl, ge, h, w, y, lse, ent, 1.0, -100, 128, "cpu", False, False)
    assert not zh.any() and not zw.any()
