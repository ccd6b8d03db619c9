"""crs_fast.integrations.trl: patched functions give TRL's values and gradients."""

import pytest
import torch
from frameworks import require
from helpers import LOW, assert_within_budget, grad_of, make_mask, rand

import crs_fast as cf
import crs_fast.integrations.trl as ct

trl_utils = require("trl.trainer.utils")
ORIG = {
    n: getattr(trl_utils, n)
    for n in ("selective_log_softmax", "entropy_from_logits", "selective_log_softmax_and_entropy")
}


@pytest.fixture
def patched():
    ct.patch()
    yield
    ct.unpatch()


def test_patch_unpatch():
    import trl.trainer.grpo_trainer as grpo  # imports selective_log_softmax by name

    had = grpo.__dict__.get("selective_log_softmax") is ORIG["selective_log_softmax"]
    ct.patch()
    assert trl_utils.selective_log_softmax is ct.selective_log_softmax
    if had:
        assert grpo.selective_log_softmax is ct.selective_log_softmax
    ct.unpatch()
    assert all(getattr(trl_utils, n) is f for n, f in ORIG.items())
    if had:
        assert grpo.selective_log_softmax is ORIG["selective_log_softmax"]


@pytest.mark.parametrize("temperature", [1.0, 0.6])
@pytest.mark.parametrize("with_mask", [False, True])
def test_selective_log_softmax(patched, temperature, with_mask, gen):
    z, y = rand(4, 10, 333, gen=gen, scale=2.0), torch.randint(0, 333, (4, 10), generator=gen)
    rm = make_mask(4, 10, gen=gen) if with_mask else None
    new = trl_utils.selective_log_softmax(z, y, temperature, rm)
    torch.testing.assert_close(new, ORIG["selective_log_softmax"](z, y, temperature, rm), rtol=1e-5, atol=1e-5)
    g_new = grad_of(lambda a: trl_utils.selective_log_softmax(a, y, temperature, rm), z)[0]
    g_old = grad_of(lambda a: ORIG["selective_log_softmax"](a, y, temperature, rm), z)[0]
    torch.testing.assert_close(g_new, g_old, rtol=1e-5, atol=1e-6)
    lp, ent = trl_utils.selective_log_softmax_and_entropy(z, y, temperature=temperature, row_mask=rm)
    lp0, ent0 = ORIG["selective_log_softmax_and_entropy"](z, y, temperature=temperature, row_mask=rm)
    torch.testing.assert_close(lp, lp0, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ent, ent0, rtol=1e-5, atol=1e-5)


def test_multi_index_falls_back(patched, gen):
    z, y = rand(3, 50, gen=gen), torch.randint(0, 50, (3, 4), generator=gen)
    torch.testing.assert_close(trl_utils.selective_log_softmax(z, y), ORIG["selective_log_softmax"](z, y))


@pytest.mark.parametrize("dtype", [torch.float32, *LOW])
def test_entropy(patched, dtype, gen):
    z = rand(5, 6, 257, gen=gen, scale=3.0).to(dtype)
    new, old = trl_utils.entropy_from_logits(z), ORIG["entropy_from_logits"](z)
    assert new.dtype == old.dtype
    if dtype == torch.float32:
        torch.testing.assert_close(new, old, rtol=1e-5, atol=1e-5)
    else:
        assert_within_budget(new, old, ORIG["entropy_from_logits"](z.double()), dtype)


def test_compute_advantages_is_trl_mode(gen):
    v, r, m = rand(4, 20, gen=gen), rand(4, 20, gen=gen), make_mask(4, 20, gen=gen)
    for a, b in zip(
        ct.compute_advantages(v, r, m, 0.99, 0.9), cf.gae(r, v, m, gamma=0.99, lam=0.9, mode="trl"), strict=True
    ):
        torch.testing.assert_close(a, b)
