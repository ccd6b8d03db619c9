"""The GPU backends against the fp64 reference: backend="triton" under TRITON_INTERPRET=1 on CPU
tensors (small shapes, fp32 and fp16; bf16 data upcast to fp32: the interpreter's bf16 arithmetic
is wrong), and on a GPU (CRS_FAST_TEST_DEVICE=cuda, bench/gpu_check.sh) both "triton" and "cuda"."""

import os

import pytest
import torch
from frameworks import require
from helpers import check, grad_of, make_mask, rand

import crs_fast as cf
from crs_fast.ops import reference as R

require("triton")
DEVICE = os.environ.get("CRS_FAST_TEST_DEVICE", "cpu")  # cuda on a GPU machine (bench/gpu_check.sh)

DTYPES = [torch.float32, torch.float16, "bf16-upcast"]
GPU_BACKENDS = ["triton", "cuda"] if DEVICE == "cuda" else ["triton"]


@pytest.fixture(params=GPU_BACKENDS)
def backend(request):
    return request.param


def _dt(dtype):
    return (torch.bfloat16, torch.float32) if dtype == "bf16-upcast" else (dtype, dtype)


def _x(*shape, dtype, gen, scale=1.0, noncontig=False):
    data, compute = _dt(dtype)
    return rand(*shape, dtype=data, gen=gen, scale=scale, noncontig=noncontig).to(compute).to(DEVICE)


@pytest.mark.parametrize("kind", ["k1", "abs", "k2", "k3", "k3+", "k1+"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("clamp", [None, 10.0])
def test_kl(kind, dtype, clamp, backend, gen):
    lp, ref = _x(5, 37, dtype=dtype, gen=gen, scale=6.0, noncontig=True), _x(5, 37, dtype=dtype, gen=gen, scale=6.0)
    low = _dt(dtype)[1]
    out = cf.kl_penalty(lp, ref, kind=kind, clamp=clamp, backend=backend)
    check(
        out,
        low,
        R.kl_penalty(lp.double(), ref.double(), kind=kind, clamp=clamp),
        R.kl_penalty(lp, ref, kind=kind, clamp=clamp, compute=low),
    )
    g = grad_of(lambda a: cf.kl_penalty(a, ref, kind=kind, clamp=clamp, backend=backend), lp)[0]
    g_o = grad_of(lambda a: R.kl_penalty(a, ref.double(), kind=kind, clamp=clamp), lp.double())[0]
    g_l = grad_of(lambda a: R.kl_penalty(a, ref, kind=kind, clamp=clamp, compute=low), lp)[0]
    check(g, low, g_o, g_l, what="grad")


@pytest.mark.parametrize("agg", R.AGG_MODES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 1), (4, 9), (3, 700)])
def test_policy_and_value_loss(agg, dtype, shape, backend, gen):
    B, T = shape
    low = _dt(dtype)[1]
    lp = _x(B, T, dtype=dtype, gen=gen, scale=0.4)
    old, adv = (lp.float() + rand(B, T, gen=gen, scale=0.3).to(DEVICE)).to(low), _x(B, T, dtype=dtype, gen=gen)
    m = make_mask(B, T, gen=gen).to(DEVICE)
    kw = dict(clip_low=0.2, clip_high=0.28, dual_clip=3.0, agg=agg)
    loss, stats = cf.ppo_policy_loss(lp, old, adv, m, backend=backend, **kw)
    o_loss, o_stats = R.ppo_policy_loss(lp.double(), old.double(), adv.double(), m, **kw)
    l_loss, l_stats = R.ppo_policy_loss(lp, old, adv, m, compute=low, **kw)
    check(loss, low, o_loss, l_loss, "reduction", "loss")
    for key in o_stats:
        check(stats[key], low, o_stats[key], l_stats[key], "reduction", key)
    g = grad_of(lambda a: cf.ppo_policy_loss(a, old, adv, m, backend=backend, **kw)[0], lp)[0]
    g_o = grad_of(lambda a: R.ppo_policy_loss(a, old.double(), adv.double(), m, **kw)[0], lp.double())[0]
    g_l = grad_of(lambda a: R.ppo_policy_loss(a, old, adv, m, compute=low, **kw)[0], lp)[0]
    check(g, low, g_o, g_l, "reduction", "grad")
    ret = _x(B, T, dtype=dtype, gen=gen)
    vl, vs = cf.ppo_value_loss(lp, old, ret, m, clip=0.2, agg=agg, backend=backend)
    o_vl, o_vs = R.ppo_value_loss(lp.double(), old.double(), ret.double(), m, clip=0.2, agg=agg)
    l_vl, l_vs = R.ppo_value_loss(lp, old, ret, m, clip=0.2, agg=agg, compute=low)
    check(vl, low, o_vl, l_vl, "reduction", "value loss")
    check(vs["clipfrac"], low, o_vs["clipfrac"], l_vs["clipfrac"], "reduction", "value clipfrac")
    gv = grad_of(lambda a: cf.ppo_value_loss(a, old, ret, m, clip=0.2, agg=agg, backend=backend)[0], lp)[0]
    gv_o = grad_of(lambda a: R.ppo_value_loss(a, old.double(), ret.double(), m, clip=0.2, agg=agg)[0], lp.double())[0]
    gv_l = grad_of(lambda a: R.ppo_value_loss(a, old, ret, m, clip=0.2, agg=agg, compute=low)[0], lp)[0]
    check(gv, low, gv_o, gv_l, "reduction", "value grad")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 1), (3, 769), (2, 3, 2100)])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_token_logprobs(dtype, shape, temperature, backend, gen):
    low = _dt(dtype)[1]
    z = _x(*shape, dtype=dtype, gen=gen, scale=3.0)
    y = torch.randint(0, shape[-1], shape[:-1], generator=gen)
    if y.numel() > 1:
        y.view(-1)[0] = -100
    y = y.to(DEVICE)
    lp, ent = cf.token_logprobs(z, y, temperature=temperature, entropy=True, backend=backend)
    o_lp, o_ent = R.token_logprobs(z.double(), y, temperature=temperature)
    l_lp, l_ent = R.token_logprobs(z, y, temperature=temperature, compute=low)
    check(lp, low, o_lp, l_lp, "reduction", "logprobs")
    check(ent, low, o_ent, l_ent, "reduction", "entropy")
    assert (lp <= 0).all() and (ent >= 0).all()
    w = [rand(*y.shape, gen=gen).double().to(DEVICE), rand(*y.shape, gen=gen).double().to(DEVICE)]
    g = grad_of(
        lambda a: cf.token_logprobs(a, y, temperature=temperature, entropy=True, backend=backend), z, weights=w
    )[0]
    g_o = grad_of(lambda a: R.token_logprobs(a, y, temperature=temperature), z.double(), weights=w)[0]
    g_l = grad_of(lambda a: R.token_logprobs(a, y, temperature=temperature, compute=low), z, weights=w)[0]
    check(g, low, g_o, g_l, "reduction", "grad")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", [((1,), 1, 1, None), ((7,), 33, 100, 40), ((2, 3), 20, 161, None)])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_linear_logprobs(dtype, case, temperature, gen):
    lead, H, V, chunk = case
    low = _dt(dtype)[1]
    h = _x(*lead, H, dtype=dtype, gen=gen, noncontig=True)
    w = _x(V, H, dtype=dtype, gen=gen, scale=H**-0.5)
    y = torch.randint(0, V, lead, generator=gen)
    if y.numel() > 1:
        y.view(-1)[-1] = -100
    y = y.to(DEVICE)
    kw = dict(temperature=temperature)
    lp, ent = cf.linear_logprobs(h, w, y, entropy=True, chunk_size=chunk, backend="triton", **kw)
    assert lp.dtype == torch.float32 and lp.shape == y.shape
    o_lp, o_ent = R.linear_logprobs(h.double(), w.double(), y, **kw)
    l_lp, l_ent = R.linear_logprobs(h, w, y, compute=low, **kw)
    check(lp, low, o_lp, l_lp, "reduction", "logprobs")
    check(ent, low, o_ent, l_ent, "reduction", "entropy")
    assert (lp <= 0).all() and (ent >= 0).all()
    wts = [rand(*lead, gen=gen).double().to(DEVICE), rand(*lead, gen=gen).double().to(DEVICE)]
    g_k = grad_of(
        lambda a, b: cf.linear_logprobs(a, b, y, entropy=True, chunk_size=chunk, backend="triton", **kw),
        h,
        w,
        weights=wts,
    )
    g_o = grad_of(lambda a, b: R.linear_logprobs(a, b, y, **kw), h.double(), w.double(), weights=wts)
    g_l = grad_of(lambda a, b: R.linear_logprobs(a, b, y, compute=low, **kw), h, w, weights=wts)
    for k, o, lo, name in zip(g_k, g_o, g_l, ("d hidden", "d weight"), strict=True):
        assert k.dtype == low
        check(k, low, o, lo, "reduction", name)


def test_linear_logprobs_float64_needs_another_backend():
    h = torch.zeros(2, 4, dtype=torch.float64, device=DEVICE)
    with pytest.raises(cf.BackendUnavailableError, match="not float64"):
        cf.linear_logprobs(h, h, torch.zeros(2, dtype=torch.int64, device=DEVICE), backend="triton")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (5, 300, 24, 7), (20, 100, 40, 20)])
@pytest.mark.parametrize("extras", [False, True])
def test_topk_scores(dtype, shape, extras, backend, gen):
    B, N, d, k = shape
    q = rand(B, d, dtype=dtype, gen=gen, noncontig=d > 1).to(DEVICE)
    items = rand(N, d, dtype=dtype, gen=gen).to(DEVICE)
    bias = exclude = None
    if extras:
        bias = rand(N, gen=gen).to(DEVICE)
        exclude = torch.randint(-1, N, (B, 3), generator=gen).to(DEVICE)
        items[N // 2] = float("nan")  # a NaN score never ranks
        if N > 4:  # exact ties: the lower index ranks first
            items[1], bias[1] = items[3], bias[3]
    vals, idx = cf.topk_scores(q, items, k=k, bias=bias, exclude=exclude, backend=backend)
    o_vals, o_idx = R.topk_scores(q, items, k=k, bias=bias, exclude=exclude)
    torch.testing.assert_close(vals, o_vals, rtol=1e-5, atol=1e-5)
    if extras and N > 4:
        assert torch.equal(idx, o_idx)
    ranked = torch.where(idx >= 0, idx, 0)
    s = q.float() @ items.float().T + (0 if bias is None else bias.float())
    torch.testing.assert_close(s.gather(1, ranked)[idx >= 0], vals[idx >= 0], rtol=1e-5, atol=1e-5)


def test_topk_large_k_needs_another_backend():
    from crs_fast.kernels.triton.topk_scores import MAX_K
    from crs_fast.ops.topk_scores import TRITON_MAX_K

    assert MAX_K == TRITON_MAX_K
    x = torch.zeros(2, 3, 300, device=DEVICE)[0]
    items = torch.zeros(300, 300, device=DEVICE)
    with pytest.raises(cf.BackendUnavailableError, match=f"at most {MAX_K}"):
        cf.topk_scores(x[:, :300], items, k=MAX_K + 1, backend="triton")


@pytest.mark.parametrize("mode", ["verl", "trl", "openrlhf"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 1), (5, 33), (20, 70)])
@pytest.mark.parametrize("whiten", [True, False])
def test_gae(mode, dtype, shape, whiten, backend, gen):
    low = _dt(dtype)[1]
    r, v = _x(*shape, dtype=dtype, gen=gen, noncontig=shape[1] > 1), _x(*shape, dtype=dtype, gen=gen)
    m = make_mask(*shape, gen=gen).to(DEVICE)
    kw = dict(gamma=0.97, lam=0.9, mode=mode, whiten=whiten)
    adv, ret = cf.gae(r, v, m, backend=backend, **kw)
    o_adv, o_ret = R.gae(r.double(), v.double(), m, **kw)
    l_adv, l_ret = R.gae(r, v, m, compute=low, **kw)
    check(ret, low, o_ret, l_ret, "reduction", "returns")
    check(adv, low, o_adv, l_adv, "reduction", "advantages")


@pytest.mark.parametrize("mode", ["verl", "trl", "openrlhf"])
@pytest.mark.parametrize("variant", ["rows", "chunked"])
@pytest.mark.parametrize("shape", [(1, 1), (3, 32), (4, 97)])
def test_gae_variants(mode, variant, shape, gen):
    from crs_fast.kernels.triton import gae as tk

    r, v = rand(*shape, gen=gen).to(DEVICE), rand(*shape, gen=gen).to(DEVICE)
    m = make_mask(*shape, gen=gen).to(DEVICE)
    if shape[0] > 2:
        m[1] = 0  # an all-masked row
        m[2, -5:] = 0  # trailing padding after the last valid token
    kw = dict(gamma=0.97, lam=0.9, mode=mode, whiten=False)
    adv, ret = tk.gae(r, v, m.to(torch.uint8), variant=variant, **kw)
    o_adv, o_ret = R.gae(r.double(), v.double(), m, **kw)
    l_adv, l_ret = R.gae(r, v, m, compute=torch.float32, **kw)
    check(ret, torch.float32, o_ret, l_ret, "reduction", "returns")
    check(adv, torch.float32, o_adv, l_adv, "reduction", "advantages")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 1), (6, 33), (3, 1500)])
def test_token_rewards(dtype, shape, backend, gen):
    low = _dt(dtype)[1]
    scores, kl = _x(shape[0], dtype=dtype, gen=gen, scale=3.0), _x(*shape, dtype=dtype, gen=gen)
    m = make_mask(*shape, gen=gen).to(DEVICE)
    out = cf.token_rewards(scores, kl, m, beta=0.05, clip=2.0, backend=backend)
    check(
        out,
        low,
        R.token_rewards(scores.double(), kl.double(), m, beta=0.05, clip=(-2.0, 2.0)),
        R.token_rewards(scores, kl, m, beta=0.05, clip=(-2.0, 2.0), compute=low),
    )


def test_topk_float64_inputs_score_in_float32(gen):
    """float64 queries and items are scored in float32 as the reference does (the kernel's
    float32 accumulator did not compile for float64 operands on a GPU: compile_check found it)."""
    q, items = (
        torch.randn(3, 20, generator=gen, dtype=torch.float64),
        torch.randn(90, 20, generator=gen, dtype=torch.float64),
    )
    vals, idx = cf.topk_scores(q.to(DEVICE), items.to(DEVICE), k=5, backend="triton")
    o_vals, o_idx = R.topk_scores(q, items, k=5)
    assert torch.equal(idx.cpu(), o_idx)
    torch.testing.assert_close(vals.cpu(), o_vals, rtol=1e-5, atol=1e-5)
