"""Sizes where GPU kernels have broken in published code: N * V > 2^31 for the log-prob ops (int32
offsets overflowed) and T >= 65,536 for GAE and the PPO losses (a (B, L) grid hit its limit).
They need a GPU (bench/gpu_check.sh runs them); the oracle is crs_fast's CPU backend, itself
checked against the reference by tests/ops, on copies of the same data."""

import os

import pytest
import torch
from frameworks import require

import crs_fast as cf

require("triton")
DEVICE = os.environ.get("CRS_FAST_TEST_DEVICE", "cpu")
pytestmark = pytest.mark.skipif(
    DEVICE != "cuda" or not torch.cuda.is_available(), reason="needs a CUDA GPU (CRS_FAST_TEST_DEVICE=cuda)"
)
BACKENDS = ["triton", "cuda"]


def _mask(B, T, gen):
    m = torch.rand(B, T, generator=gen) < 0.8
    m[0, : T // 3] = False  # a long masked prefix (multi-turn observation tokens)
    return m


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", ["verl", "trl", "openrlhf"])
def test_gae_long_sequences(backend, mode, gen):
    B, T = 3, 70_000
    r, v = torch.randn(B, T, generator=gen), torch.randn(B, T, generator=gen)
    m = _mask(B, T, gen)
    kw = dict(gamma=0.999, lam=0.95, mode=mode, whiten=True)
    adv, ret = cf.gae(r.cuda(), v.cuda(), m.cuda(), backend=backend, **kw)
    o_adv, o_ret = cf.gae(r, v, m, backend="cpu", **kw)
    torch.testing.assert_close(ret.cpu(), o_ret, rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(adv.cpu(), o_adv, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("variant", ["rows", "chunked"])
def test_triton_gae_variants_long(variant, gen):
    from crs_fast.kernels.triton import gae as tk

    B, T = 2, 65_536
    r, v = torch.randn(B, T, generator=gen), torch.randn(B, T, generator=gen)
    m = _mask(B, T, gen)
    adv, ret = tk.gae(r.cuda(), v.cuda(), m.cuda().to(torch.uint8), 0.99, 0.95, "verl", False, variant=variant)
    o_adv, o_ret = cf.gae(r, v, m, gamma=0.99, lam=0.95, mode="verl", whiten=False, backend="cpu")
    torch.testing.assert_close(adv.cpu(), o_adv, rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(ret.cpu(), o_ret, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-mean"])
def test_ppo_losses_long_sequences(backend, agg, gen):
    B, T = 3, 70_000
    lp = torch.randn(B, T, generator=gen) * 0.3
    old, adv, m = lp + 0.2 * torch.randn(B, T, generator=gen), torch.randn(B, T, generator=gen), _mask(B, T, gen)
    kw = dict(clip_low=0.2, clip_high=0.28, dual_clip=3.0, agg=agg)
    g_lp = lp.cuda().requires_grad_()
    loss, stats = cf.ppo_policy_loss(g_lp, old.cuda(), adv.cuda(), m.cuda(), backend=backend, **kw)
    loss.backward()
    c_lp = lp.clone().requires_grad_()
    o_loss, o_stats = cf.ppo_policy_loss(c_lp, old, adv, m, backend="cpu", **kw)
    o_loss.backward()
    torch.testing.assert_close(loss.cpu(), o_loss, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(g_lp.grad.cpu(), c_lp.grad, rtol=1e-5, atol=1e-12)
    for key in o_stats:
        torch.testing.assert_close(stats[key].cpu(), o_stats[key], rtol=1e-5, atol=1e-7)
    vl, _ = cf.ppo_value_loss(lp.cuda(), old.cuda(), adv.cuda(), m.cuda(), clip=0.2, agg=agg, backend=backend)
    o_vl, _ = cf.ppo_value_loss(lp, old, adv, m, clip=0.2, agg=agg, backend="cpu")
    torch.testing.assert_close(vl.cpu(), o_vl, rtol=1e-5, atol=1e-7)


def _rows_oracle(z_rows, y_rows):
    lp, ent = cf.token_logprobs(z_rows.float(), y_rows, entropy=True, backend="cpu")
    return lp, ent


@pytest.mark.parametrize("backend", BACKENDS)
def test_token_logprobs_beyond_int32_offsets(backend, gen):
    N, V = 14_200, 151_936  # N * V = 2.16e9 > 2^31; bf16 logits 4.3 GB, gradient 4.3 GB
    assert N * V > 2**31
    z = torch.randn(N, V, device="cuda", dtype=torch.bfloat16) * 3
    y = torch.randint(0, V, (N,), device="cuda")
    z.requires_grad_()
    lp, ent = cf.token_logprobs(z, y, entropy=True, backend=backend)
    (lp.sum() + 0.5 * ent.sum()).backward()
    tail = slice(N - 64, N)  # the rows whose offsets pass 2^31
    o_lp, o_ent = _rows_oracle(z.detach()[tail].cpu(), y[tail].cpu())
    torch.testing.assert_close(lp[tail].cpu(), o_lp, rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(ent[tail].cpu(), o_ent, rtol=1e-4, atol=1e-3)
    zr = z.detach()[tail].cpu().float().requires_grad_()
    a, b = cf.token_logprobs(zr, y[tail].cpu(), entropy=True, backend="cpu")
    (a.sum() + 0.5 * b.sum()).backward()
    torch.testing.assert_close(z.grad[tail].cpu().float(), zr.grad, rtol=2e-2, atol=1e-4)
    assert (lp <= 0).all() and (ent >= 0).all()


def test_linear_logprobs_beyond_int32_offsets(gen):
    N, H, V = 16_384, 64, 151_936  # N * V = 2.5e9 > 2^31 logits never materialised
    h = (torch.randn(N, H, device="cuda") / 4).to(torch.bfloat16).requires_grad_()
    w = (torch.randn(V, H, device="cuda") / 8).to(torch.bfloat16).requires_grad_()
    y = torch.randint(0, V, (N,), device="cuda")
    lp, ent = cf.linear_logprobs(h, w, y, entropy=True, backend="triton")
    lp.sum().backward()
    tail = slice(N - 32, N)
    o_lp, o_ent = cf.linear_logprobs(
        h.detach()[tail].cpu().float(), w.detach().cpu().float(), y[tail].cpu(), entropy=True, backend="cpu"
    )
    torch.testing.assert_close(lp[tail].cpu(), o_lp, rtol=1e-3, atol=1e-2)
    torch.testing.assert_close(ent[tail].cpu(), o_ent, rtol=1e-3, atol=1e-2)
    assert h.grad is not None and w.grad is not None and torch.isfinite(h.grad.float()).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_topk_many_items(backend, gen):
    B, N, d, k = 64, 300_000, 64, 50
    q, items = torch.randn(B, d, device="cuda"), torch.randn(N, d, device="cuda")
    vals, idx = cf.topk_scores(q, items, k=k, backend=backend)
    ref_vals, ref_idx = torch.topk(q @ items.T, k, dim=1)
    torch.testing.assert_close(vals, ref_vals, rtol=1e-5, atol=1e-4)
    assert (idx == ref_idx).float().mean() > 0.99  # ties and last-bit differences aside
