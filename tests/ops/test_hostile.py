"""Hostile inputs on the CPU backends ("cpu" and the "torch" reference): masks of every dtype and
layout, NaN / inf at excluded and included positions, -inf logits on every entropy path, and the
edge cases where the reference and the kernels used to disagree. The Triton backend runs the
same checks in tests/triton/test_hostile_triton.py."""

import math

import pytest
import torch
from hostile import (
    CASES,
    NONFINITE,
    check_excluded,
    check_included,
    check_layouts,
    entropy64,
    masked_logits,
    masks,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import crs_fast as cf
from crs_fast.ops import reference as R
from crs_fast.ops.kl_controllers import AdaptiveKLController

BACKENDS = ("cpu", "torch")
IDS = [c.name for c in CASES]
FUZZ = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", CASES, ids=IDS)
@FUZZ
@given(drawn=masks(), seed=st.integers(0, 2**31 - 1))
def test_mask_any_dtype_any_layout(case, backend, drawn, seed):
    check_layouts(case, backend, drawn, seed)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", CASES, ids=IDS)
@FUZZ
@given(drawn=masks(), value=st.sampled_from(NONFINITE), seed=st.integers(0, 2**31 - 1))
def test_nonfinite_at_excluded_positions_changes_nothing(case, backend, drawn, value, seed):
    check_excluded(case, backend, drawn[0], value, seed)


@pytest.mark.parametrize("backend", ["cpu"])
@pytest.mark.parametrize("case", CASES, ids=IDS)
@FUZZ
@given(drawn=masks(), value=st.sampled_from(NONFINITE), seed=st.integers(0, 2**31 - 1))
def test_nonfinite_at_included_position_matches_reference(case, backend, drawn, value, seed):
    check_included(case, backend, drawn[0], value, seed)


def test_strided_mask_repro():
    """Issue 16's repro: a transposed float mask gave advantages off by 1.41 on the CPU backend."""
    torch.manual_seed(0)
    r = torch.randn(3, 5)
    m = torch.ones(5, 3).t()
    m[1, 3:] = 0
    for be in BACKENDS:
        a = cf.gae(r, r, m, gamma=0.9, lam=0.9, backend=be)[0]
        assert torch.equal(a, cf.gae(r, r, m.contiguous(), gamma=0.9, lam=0.9, backend=be)[0])


# ---- KL: no mask; NaN and inf exactly as the reference, values and gradients ----


@pytest.mark.parametrize("kind", R.KL_KINDS)
@pytest.mark.parametrize("clamp", [None, 10.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_kl_nonfinite_like_reference(kind, clamp, dtype):
    specials = torch.tensor([float("nan"), float("inf"), float("-inf"), 0.5, -30.0, 30.0])
    lp, ref = torch.meshgrid(specials, specials, indexing="ij")
    lp, ref = lp.reshape(-1).to(dtype), ref.reshape(-1).to(dtype)
    for be in ("cpu",):
        a = lp.clone().requires_grad_(True)
        out = cf.kl_penalty(a, ref, kind=kind, clamp=clamp, backend=be)
        (g,) = torch.autograd.grad(out.sum(), a)
        b = lp.clone().requires_grad_(True)
        want = R.kl_penalty(b, ref, kind=kind, clamp=clamp)
        (gw,) = torch.autograd.grad(want.sum(), b)
        assert torch.equal(out.isnan(), want.isnan()), f"{kind} values: NaN pattern"
        assert torch.equal(g.isnan(), gw.isnan()), f"{kind} grads: NaN pattern"
        fin = want.isfinite()
        torch.testing.assert_close(out[fin].double(), want[fin].double(), rtol=1e-2, atol=1e-2)


def test_kl_nan_is_nan_for_every_kind():
    """Issue 16: the CPU kernel gave -inf (or the clamp value) for a NaN input."""
    n = torch.tensor([float("nan")])
    for kind in R.KL_KINDS:
        for clamp in (None, 5.0):
            assert cf.kl_penalty(n, torch.zeros(1), kind=kind, clamp=clamp, backend="cpu").isnan().all()


# ---- entropy with -inf logits: 0 log 0 = 0 on every path ----


@pytest.mark.parametrize("backend", BACKENDS)
def test_entropy_with_neg_inf_logits(backend, gen):
    z = masked_logits(gen)
    y = torch.zeros(z.shape[0], dtype=torch.int64)
    lp, ent = cf.token_logprobs(z, y, entropy=True, backend=backend)
    torch.testing.assert_close(ent.double(), entropy64(z), rtol=1e-5, atol=1e-5)
    zz = z.clone().requires_grad_(True)
    lp, ent = cf.token_logprobs(zz, y, entropy=True, backend=backend)
    (g,) = torch.autograd.grad((lp + ent).sum(), zz)
    assert g.isfinite().all(), "a -inf logit must get gradient 0, not NaN"
    assert (g[z == float("-inf")] == 0).all()
    z64 = z.double().requires_grad_(True)
    (g64,) = torch.autograd.grad(
        (torch.log_softmax(z64, -1)[:, 0] + _entropy64_grad(z64)).sum(), z64
    )  # the fp64 oracle of the same gradient
    torch.testing.assert_close(g.double(), g64, rtol=1e-4, atol=1e-5)


def _entropy64_grad(z64):
    logp = torch.log_softmax(z64, -1)
    p = logp.exp()
    return -(p * torch.where(p > 0, logp, torch.zeros_like(logp))).sum(-1)


def test_entropy_repro():
    """Issue 16: [[0, 1, -inf]] gave 0 on the CPU and NaN in the reference; the true value is 0.582."""
    z = torch.tensor([[0.0, 1.0, float("-inf")]])
    for be in BACKENDS:
        ent = cf.token_logprobs(z, torch.tensor([0]), entropy=True, backend=be)[1]
        assert abs(float(ent) - 0.5822) < 1e-3


@pytest.mark.parametrize("backend", BACKENDS)
def test_fused_head_entropy_with_neg_inf_logit(backend, gen):
    """A weight row of -inf against positive hidden states is a -inf logit in the fused LM head."""
    h = torch.rand(5, 8, generator=gen) + 0.1
    w = torch.randn(13, 8, generator=gen)
    w[[3, 7]] = float("-inf")
    y = torch.randint(0, 3, (5,), generator=gen)
    lp, ent = cf.linear_logprobs(h, w, y, entropy=True, backend=backend, chunk_size=4)
    z = h.double() @ w.double().T
    torch.testing.assert_close(ent.double(), entropy64(z), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(lp.double(), torch.log_softmax(z, -1).gather(1, y[:, None])[:, 0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_row_without_finite_logit_is_nan(backend):
    """Documented: a row whose logits are all -inf has no distribution; lp and H are NaN."""
    z = torch.tensor([[float("-inf")] * 4, [0.0, 1.0, 2.0, 3.0]])
    lp, ent = cf.token_logprobs(z, torch.tensor([1, 1]), entropy=True, backend=backend)
    assert lp[0].isnan() and ent[0].isnan()
    assert lp[1].isfinite() and ent[1].isfinite()


@pytest.mark.parametrize("framework", ["trl", "verl", "openrlhf"])
def test_patched_entropy_with_neg_inf_logits(framework, gen):
    from crs_fast.integrations import _patching

    z = masked_logits(gen).view(2, 3, -1)
    ent = _patching.entropy(z)
    torch.testing.assert_close(ent.double(), entropy64(z), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_nan_hidden_row(backend, gen):
    """Issue 16: a NaN hidden row gave lp = 0 and H = 0; it is NaN, and the other rows are intact."""
    h, w = torch.randn(4, 8, generator=gen), torch.randn(11, 8, generator=gen)
    y = torch.randint(0, 11, (4,), generator=gen)
    clean = cf.linear_logprobs(h, w, y, entropy=True, backend=backend)
    h[1] = float("nan")
    lp, ent = cf.linear_logprobs(h, w, y, entropy=True, backend=backend)
    assert lp[1].isnan() and ent[1].isnan()
    keep = torch.tensor([True, False, True, True])
    assert torch.equal(lp[keep], clean[0][keep]) and torch.equal(ent[keep], clean[1][keep])


@pytest.mark.parametrize("backend", BACKENDS)
def test_ignored_rows_are_never_read(backend, gen):
    """NaN in rows whose label is ignore_index: lp = H = 0 there, gradients unchanged everywhere."""
    N, V, H = 5, 13, 6
    z, y = torch.randn(N, V, generator=gen), torch.randint(0, V, (N,), generator=gen)
    y[2] = -100
    h, w = torch.randn(N, H, generator=gen), torch.randn(V, H, generator=gen)

    def grads(zz, hh):
        zz, hh, ww = zz.clone().requires_grad_(True), hh.clone().requires_grad_(True), w.clone().requires_grad_(True)
        lp, ent = cf.token_logprobs(zz, y, entropy=True, backend=backend)
        lp2, ent2 = cf.linear_logprobs(hh, ww, y, entropy=True, backend=backend)
        outs = (lp, ent, lp2, ent2)
        gs = torch.autograd.grad(sum(o.sum() for o in outs), (zz, hh, ww))
        return [o.detach() for o in outs] + list(gs)

    clean = grads(z, h)
    z[2], h[2] = float("nan"), float("nan")
    for a, b in zip(grads(z, h), clean, strict=True):
        assert torch.equal(a, b)


# ---- topk ----


@pytest.mark.parametrize("backend", BACKENDS)
def test_topk_takes_parameters(backend, gen):
    """Issue 16: nn.Parameter queries / items raised a torch-internal error on the CPU backend."""
    q, e = torch.nn.Parameter(torch.randn(3, 4, generator=gen)), torch.nn.Parameter(torch.randn(20, 4, generator=gen))
    vals, idx = cf.topk_scores(q, e, k=5, bias=torch.nn.Parameter(torch.randn(20, generator=gen)), backend=backend)
    assert not vals.requires_grad and not idx.requires_grad
    want = cf.topk_scores(q.detach(), e.detach(), k=5, bias=None, backend="torch")
    assert want[0].shape == vals.shape


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bad", [-2, 20, 1000])
def test_topk_rejects_bad_exclude(backend, bad, gen):
    q, e = torch.randn(2, 4, generator=gen), torch.randn(20, 4, generator=gen)
    ex = torch.tensor([[0, bad], [-1, -1]])
    with pytest.raises(ValueError, match="exclude"):
        cf.topk_scores(q, e, k=3, exclude=ex, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_topk_valid_neg_inf_item_ranks_before_padding(backend):
    """A valid item scored -inf still ranks; only missing items are -1 padding, after it."""
    q = torch.ones(1, 2)
    e = torch.tensor([[1.0, 0.0], [0.0, 0.0], [2.0, 0.0]])
    bias = torch.tensor([0.0, float("-inf"), 0.0])
    ex = torch.tensor([[0]])
    vals, idx = cf.topk_scores(q, e, k=3, bias=bias, exclude=ex, backend=backend)
    assert idx.tolist() == [[2, 1, -1]]
    assert vals[0, 0] == 2.0 and vals[0, 1] == float("-inf") and vals[0, 2] == float("-inf")


@pytest.mark.parametrize("backend", BACKENDS)
def test_topk_nan_scores_never_rank(backend, gen):
    q, e = torch.randn(2, 3, generator=gen), torch.randn(6, 3, generator=gen)
    e[2] = float("nan")
    vals, idx = cf.topk_scores(q, e, k=6, backend=backend)
    assert (idx[:, :5] != 2).all() and (idx[:, 5] == -1).all() and not vals.isnan().any()


# ---- the reference agrees with the kernels on what validation accepts ----


@pytest.mark.parametrize("label_dtype", [torch.int8, torch.int16, torch.int32, torch.uint8])
def test_small_integer_labels(label_dtype, gen):
    z = torch.randn(4, 50, generator=gen)
    y = torch.randint(0, 50, (4,), generator=gen)
    want = cf.token_logprobs(z, y, backend="cpu")
    for be in BACKENDS:
        torch.testing.assert_close(cf.token_logprobs(z, y.to(label_dtype), backend=be), want)


@pytest.mark.parametrize("backend", BACKENDS)
def test_whitening_of_huge_values(backend):
    """float32 inputs near 1e20: the statistics are float64, so the result is finite and whitened."""
    x = torch.tensor([[1e20, -1e20, 3e20, 0.0]])
    m = torch.ones_like(x, dtype=torch.bool)
    out = cf.masked_whiten(x, m, backend=backend)
    assert out.isfinite().all()
    torch.testing.assert_close(out.double(), R.masked_whiten(x.double(), m), rtol=1e-5, atol=1e-5)
    adv, _ = cf.gae(x, torch.zeros_like(x), m, gamma=1.0, lam=1.0, backend=backend)
    assert adv.isfinite().all()


@pytest.mark.parametrize("op", ["gae", "masked_whiten", "reinforce_returns", "token_rewards", "group"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_non_differentiable_ops_return_no_grad(op, backend, gen):
    x = torch.randn(3, 7, generator=gen, requires_grad=True)
    m = torch.ones(3, 7, dtype=torch.bool)
    s = torch.randn(3, generator=gen, requires_grad=True)
    outs = {
        "gae": lambda: cf.gae(x, x, m, backend=backend),
        "masked_whiten": lambda: (cf.masked_whiten(x, m, backend=backend),),
        "reinforce_returns": lambda: (cf.reinforce_returns(x, m, backend=backend),),
        "token_rewards": lambda: (cf.token_rewards(s, x, m, beta=0.1, backend=backend),),
        "group": lambda: (cf.group_advantages(s, torch.tensor([0, 0, 1]), mask=m, backend=backend),),
    }[op]()
    assert not any(o.requires_grad for o in outs)


# ---- KL controller ----


def test_adaptive_kl_controller_stays_positive_and_finite():
    c = AdaptiveKLController(0.1, 6.0, 32)
    assert c.update(0.0, 1000) > 0  # issue 16: gave -0.525
    for kl, n in [(1e9, 10**6), (0.0, 10**6), (6.0, 1)] * 20:
        assert 0 < c.update(kl, n) < math.inf
    before = c.value
    for bad in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match="current_kl"):
            c.update(bad, 1)
    assert c.value == before


def test_adaptive_kl_controller_rejects_bad_steps():
    with pytest.raises(ValueError, match="n_steps"):
        AdaptiveKLController(0.1, 6.0, 32).update(1.0, -1)


@pytest.mark.parametrize("mode", ["grpo", "rloo"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_group_advantages_nan_stays_in_its_group(mode, backend, gen):
    """A NaN score makes its own group NaN, leaves the other groups as they were, and masked
    positions of the broadcast are 0."""
    s = torch.randn(8, generator=gen)
    ids = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2])
    m = torch.rand(8, 5, generator=gen) < 0.5
    clean = cf.group_advantages(s, ids, mode=mode, mask=m, backend=backend)
    s[1] = float("nan")
    out = cf.group_advantages(s, ids, mode=mode, mask=m, backend=backend)
    mine = (ids == 0)[:, None] & m
    assert out[mine].isnan().all() and not out[~mine].isnan().any()
    assert torch.equal(out[ids != 0], clean[ids != 0]) and (out[~m] == 0).all()
