"""The hostile-input checks of tests/ops/test_hostile.py on the Triton backend (under
TRITON_INTERPRET=1 on CPU tensors): masks of every dtype and layout, non-finite values at
excluded and included positions, -inf logits in the entropy paths."""

import pytest
import torch
from frameworks import require
from hostile import CASES, NONFINITE, check_excluded, check_included, check_layouts, entropy64, masked_logits, masks
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import crs_fast as cf

require("triton")

from crs_fast.kernels import TRITON_OPS  # noqa: E402

TRITON_CASES = [c for c in CASES if c.name.split("-")[0] in TRITON_OPS]  # masked_whiten etc. are CPU-only
IDS = [c.name for c in TRITON_CASES]
FUZZ = settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.parametrize("case", TRITON_CASES, ids=IDS)
@FUZZ
@given(drawn=masks(max_b=3, max_t=12), seed=st.integers(0, 2**31 - 1))
def test_mask_any_dtype_any_layout(case, drawn, seed):
    check_layouts(case, "triton", drawn, seed)


@pytest.mark.parametrize("case", TRITON_CASES, ids=IDS)
@FUZZ
@given(drawn=masks(max_b=3, max_t=12), value=st.sampled_from(NONFINITE), seed=st.integers(0, 2**31 - 1))
def test_nonfinite_at_excluded_positions_changes_nothing(case, drawn, value, seed):
    check_excluded(case, "triton", drawn[0], value, seed)


@pytest.mark.parametrize("case", TRITON_CASES, ids=IDS)
@FUZZ
@given(drawn=masks(max_b=3, max_t=12), value=st.sampled_from(NONFINITE), seed=st.integers(0, 2**31 - 1))
def test_nonfinite_at_included_position_matches_reference(case, drawn, value, seed):
    check_included(case, "triton", drawn[0], value, seed)


def test_entropy_with_neg_inf_logits(gen):
    z = masked_logits(gen)
    y = torch.zeros(z.shape[0], dtype=torch.int64)
    zz = z.clone().requires_grad_(True)
    lp, ent = cf.token_logprobs(zz, y, entropy=True, backend="triton")
    torch.testing.assert_close(ent.double(), entropy64(z), rtol=1e-5, atol=1e-5)
    (g,) = torch.autograd.grad((lp + ent).sum(), zz)
    assert g.isfinite().all() and (g[z == float("-inf")] == 0).all()


def test_entropy_first_block_all_neg_inf():
    """A whole vocabulary block of -inf before the finite logits (a masked vocabulary)."""
    V = 2500  # more than one BLOCK_V of the kernel
    z = torch.full((2, V), float("-inf"))
    z[:, -3:] = torch.tensor([0.0, 1.0, 2.0])
    y = torch.full((2,), V - 1)
    lp, ent = cf.token_logprobs(z, y, entropy=True, backend="triton")
    torch.testing.assert_close(ent.double(), entropy64(z), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(lp.double(), torch.log_softmax(z.double(), -1)[:, -1], rtol=1e-5, atol=1e-5)


def test_fused_head_entropy_with_neg_inf_logit(gen):
    h = torch.rand(5, 16, generator=gen) + 0.1
    w = torch.randn(40, 16, generator=gen)
    w[[3, 33]] = float("-inf")
    y = torch.randint(0, 3, (5,), generator=gen)
    lp, ent = cf.linear_logprobs(h, w, y, entropy=True, backend="triton")
    torch.testing.assert_close(ent.double(), entropy64(h.double() @ w.double().T), rtol=1e-4, atol=1e-4)


def test_row_without_finite_logit_is_nan():
    z = torch.tensor([[float("-inf")] * 4, [0.0, 1.0, 2.0, 3.0]])
    lp, ent = cf.token_logprobs(z, torch.tensor([1, 1]), entropy=True, backend="triton")
    assert lp[0].isnan() and ent[0].isnan() and lp[1].isfinite() and ent[1].isfinite()


@pytest.mark.parametrize("kind", ["k1", "abs", "k2", "k3", "k3+"])
@pytest.mark.parametrize("clamp", [None, 10.0])
def test_kl_nonfinite_like_cpu(kind, clamp):
    specials = torch.tensor([float("nan"), float("inf"), float("-inf"), 0.5, -30.0, 30.0])
    lp, ref = (t.reshape(-1) for t in torch.meshgrid(specials, specials, indexing="ij"))
    outs = {}
    for be in ("cpu", "triton"):
        a = lp.clone().requires_grad_(True)
        out = cf.kl_penalty(a, ref, kind=kind, clamp=clamp, backend=be)
        outs[be] = (out.detach(), torch.autograd.grad(out.sum(), a)[0])
    for x, y in zip(outs["triton"], outs["cpu"], strict=True):
        assert torch.equal(x.isnan(), y.isnan()) and torch.equal(x.isinf(), y.isinf())


def test_nan_rows_stay_in_their_row(gen):
    """A NaN hidden state or logit row gives NaN lp and H in that row only (not 0, as the CPU
    kernels used to), in the Triton token log-probs and fused LM head alike."""
    h, w = torch.randn(4, 16, generator=gen), torch.randn(40, 16, generator=gen)
    y = torch.randint(0, 40, (4,), generator=gen)
    z = h @ w.T
    clean = [
        cf.linear_logprobs(h, w, y, entropy=True, backend="triton"),
        cf.token_logprobs(z, y, entropy=True, backend="triton"),
    ]
    h[1], z[1] = float("nan"), float("nan")
    got = [
        cf.linear_logprobs(h, w, y, entropy=True, backend="triton"),
        cf.token_logprobs(z, y, entropy=True, backend="triton"),
    ]
    keep = torch.tensor([True, False, True, True])
    for (lp, ent), (lp0, ent0) in zip(got, clean, strict=True):
        assert lp[1].isnan() and ent[1].isnan()
        assert torch.equal(lp[keep], lp0[keep]) and torch.equal(ent[keep], ent0[keep])
