"""crs_fast.integrations.verl: patched functions give verl's values and gradients."""

import importlib.metadata
import sys
import types

import numpy as np
import pytest
import torch
from frameworks import require
from helpers import assert_within_budget, grad_of, make_mask, rand

import crs_fast.integrations.verl as cv

core = require("verl.trainer.ppo.core_algos")
verl_F = require("verl.utils.torch_functional")
exp_F = require("verl.utils.experimental.torch_functional")

NAMES = [
    "compute_gae_advantage_return",
    "kl_penalty",
    "kl_penalty_forward",
    "compute_policy_loss_vanilla",
    "compute_value_loss",
    "agg_loss",
    "compute_grpo_outcome_advantage",
    "compute_rloo_outcome_advantage",
]
F_NAMES = ["logprobs_from_logits", "entropy_from_logits", "masked_whiten"]
AGG = ["token-mean", "token-sum", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm"]
GLOBAL = [{}, {"dp_size": 2, "batch_num_tokens": 300, "global_batch_size": 20}, {"loss_scale_factor": 7}]
ORIG = {n: getattr(core, n) for n in NAMES} | {n: getattr(verl_F, n) for n in F_NAMES}
ORIG_FUSED = exp_F.FusedLinearForPPO.forward


@pytest.fixture
def patched():
    cv.patch()
    yield
    cv.unpatch()


class _Cfg(types.SimpleNamespace):
    def get(self, key, default=None):
        return getattr(self, key, default)


def _mask(B, T, gen):
    m = make_mask(B, T, gen=gen, empty_row=False)
    m[:, 0] = True
    return m.float()


def test_patch_unpatch_restore_exactly():
    # a verl module that did `from verl.trainer.ppo.core_algos import agg_loss` (as ray_trainer does)
    ray_trainer = types.ModuleType("verl._crs_fast_by_name_import")
    ray_trainer.agg_loss = core.agg_loss
    sys.modules[ray_trainer.__name__] = ray_trainer

    before = dict(core.POLICY_LOSS_REGISTRY), dict(core.ADV_ESTIMATOR_REGISTRY)
    names = cv.patch()
    assert cv.patch() == names  # twice is harmless
    for n in NAMES:
        assert getattr(core, n) is getattr(cv, n)
    assert ray_trainer.agg_loss is cv.agg_loss
    assert core.POLICY_LOSS_REGISTRY["vanilla"] is cv.compute_policy_loss_vanilla
    assert core.get_policy_loss_fn("crs_fast_vanilla") is cv.compute_policy_loss_vanilla
    assert core.get_adv_estimator_fn("gae") is cv.compute_gae_advantage_return
    assert exp_F.FusedLinearForPPO.forward is cv.fused_linear_for_ppo_forward
    cv.unpatch()
    for n in NAMES:
        assert getattr(core, n) is ORIG[n]
    for n in F_NAMES:
        assert getattr(verl_F, n) is ORIG[n]
    assert ray_trainer.agg_loss is ORIG["agg_loss"]
    assert exp_F.FusedLinearForPPO.forward is ORIG_FUSED
    assert (dict(core.POLICY_LOSS_REGISTRY), dict(core.ADV_ESTIMATOR_REGISTRY)) == before
    with cv.patched():
        assert core.agg_loss is cv.agg_loss
    assert core.agg_loss is ORIG["agg_loss"]


def test_untested_version_is_refused(monkeypatch):
    real = importlib.metadata.version
    monkeypatch.setattr(importlib.metadata, "version", lambda d: "0.8.5" if d == "verl" else real(d))
    with pytest.raises(RuntimeError, match="0.8.5"):
        cv.patch()
    assert core.agg_loss is ORIG["agg_loss"]
    cv.patch(allow_untested=True)
    cv.unpatch()


@pytest.mark.parametrize("gamma,lam", [(1.0, 1.0), (0.99, 0.95)])
def test_gae(patched, gamma, lam, gen):
    r, v, m = rand(6, 50, gen=gen), rand(6, 50, gen=gen), _mask(6, 50, gen)
    for a, b in zip(
        core.compute_gae_advantage_return(r, v, m, gamma, lam),
        ORIG["compute_gae_advantage_return"](r, v, m, gamma, lam),
        strict=True,
    ):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["kl", "k1", "abs", "mse", "k2", "low_var_kl", "k3", "k1+", "k3+", "abs+", "k2+"])
def test_kl(patched, name, gen):
    lp, ref = rand(4, 30, gen=gen, scale=15.0), rand(4, 30, gen=gen, scale=15.0)  # reaches the k3 clamps
    for fn in ("kl_penalty", "kl_penalty_forward"):
        if fn == "kl_penalty_forward" and name.endswith("+"):
            continue
        torch.testing.assert_close(getattr(core, fn)(lp, ref, name), ORIG[fn](lp, ref, name), rtol=1e-5, atol=1e-5)
        g_new = grad_of(lambda a, b, f=fn: getattr(core, f)(a, b, name), lp, ref)
        g_old = grad_of(lambda a, b, f=fn: ORIG[f](a, b, name), lp, ref)
        for x, y in zip(g_new, g_old, strict=True):
            torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-5)


def test_kl_full_falls_back_to_verl(patched):
    x = torch.zeros(2, 3)
    with pytest.raises(NotImplementedError):
        core.kl_penalty(x, x, "full")


def _policy_inputs(gen, B=8, T=40, dtype=torch.float32):
    lp = rand(B, T, gen=gen, scale=0.5)
    return (
        lp.to(dtype),
        (lp + rand(B, T, gen=gen, scale=0.5)).to(dtype),
        rand(B, T, gen=gen).to(dtype),
        _mask(B, T, gen),
    )


@pytest.mark.parametrize("agg", AGG)
@pytest.mark.parametrize("info", GLOBAL)
def test_policy_loss(patched, agg, info, gen):
    lp, old, adv, m = _policy_inputs(gen)
    cfg = _Cfg(clip_ratio=0.2, clip_ratio_low=0.2, clip_ratio_high=0.28, clip_ratio_c=3.0, global_batch_info=info)
    new = core.compute_policy_loss_vanilla(old, lp, adv, m, agg, cfg)
    old_out = ORIG["compute_policy_loss_vanilla"](old, lp, adv, m, agg, cfg)
    # The loss is a masked sum of ~B*T terms that can cancel to far below their size, so a tolerance
    # relative to the result is below fp32 summation error there: both sides are held to fp64 truth
    # within a bound proportional to the aggregated |terms| (verl's own loss on |advantages|).
    f64 = ORIG["compute_policy_loss_vanilla"]
    truth = f64(old.double(), lp.double(), adv.double(), m.double(), agg, cfg)[0]
    size = f64(old.double(), lp.double(), adv.double().abs(), m.double(), agg, cfg)[0].abs()
    bound = 1e-6 + 1e-5 * truth.abs() + 64 * torch.finfo(torch.float32).eps * size
    for side, value in (("crs_fast", new[0]), ("verl", old_out[0])):
        assert (value.double() - truth).abs() <= bound, f"{side} {value.item()} vs fp64 {truth.item()} > {bound.item()}"
    assert (new[0].double() - old_out[0].double()).abs() <= 2 * bound
    for key, value in old_out[1].items():
        assert new[1][key] == pytest.approx(value, rel=1e-5, abs=1e-6), key
    g_new = grad_of(lambda a: core.compute_policy_loss_vanilla(old, a, adv, m, agg, cfg)[0], lp)[0]
    g_old = grad_of(lambda a: ORIG["compute_policy_loss_vanilla"](old, a, adv, m, agg, cfg)[0], lp)[0]
    torch.testing.assert_close(g_new, g_old, rtol=1e-5, atol=1e-7)


def test_policy_loss_rollout_weights_fall_back(patched, gen):
    lp, old, adv, m = _policy_inputs(gen)
    w = rand(*lp.shape, gen=gen).abs()
    cfg = _Cfg(clip_ratio=0.2, clip_ratio_low=None, clip_ratio_high=None, global_batch_info={})
    a = core.compute_policy_loss_vanilla(old, lp, adv, m, "token-mean", cfg, rollout_is_weights=w)
    b = ORIG["compute_policy_loss_vanilla"](old, lp, adv, m, "token-mean", cfg, rollout_is_weights=w)
    torch.testing.assert_close(a[0], b[0])


def test_policy_loss_bf16_within_budget(patched, gen):
    lp, old, adv, m = _policy_inputs(gen, dtype=torch.bfloat16)
    cfg = _Cfg(clip_ratio=0.2, clip_ratio_low=None, clip_ratio_high=None, global_batch_info={})
    truth = ORIG["compute_policy_loss_vanilla"](old.double(), lp.double(), adv.double(), m.double(), "token-mean", cfg)
    low = ORIG["compute_policy_loss_vanilla"](old, lp, adv, m, "token-mean", cfg)
    new = core.compute_policy_loss_vanilla(old, lp, adv, m, "token-mean", cfg)
    assert new[0].dtype == low[0].dtype
    assert_within_budget(new[0], low[0], truth[0], torch.bfloat16, "policy loss")


@pytest.mark.parametrize("agg", AGG)
@pytest.mark.parametrize("info", GLOBAL)
def test_value_loss_and_agg_loss(patched, agg, info, gen):
    v, old, ret, m = rand(6, 33, gen=gen), rand(6, 33, gen=gen), rand(6, 33, gen=gen), _mask(6, 33, gen)
    new = core.compute_value_loss(v, ret, old, m, 0.2, agg, **info)
    ref = ORIG["compute_value_loss"](v, ret, old, m, 0.2, agg, **info)
    for a, b in zip(new, ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    g_new = grad_of(lambda a: core.compute_value_loss(a, ret, old, m, 0.2, agg, **info)[0], v)[0]
    g_old = grad_of(lambda a: ORIG["compute_value_loss"](a, ret, old, m, 0.2, agg, **info)[0], v)[0]
    torch.testing.assert_close(g_new, g_old, rtol=1e-5, atol=1e-7)
    mat = rand(6, 33, gen=gen)
    torch.testing.assert_close(
        core.agg_loss(mat, m, agg, **info), ORIG["agg_loss"](mat, m, agg, **info), rtol=1e-5, atol=1e-6
    )


@pytest.mark.parametrize("name", ["compute_grpo_outcome_advantage", "compute_rloo_outcome_advantage"])
def test_outcome_advantages(patched, name, gen):
    B, T = 20, 9
    rewards = torch.zeros(B, T)
    rewards[:, -1] = rand(B, gen=gen)
    m = _mask(B, T, gen)
    index = np.array([f"prompt{i // 4}" for i in range(B)], dtype=object)
    index[3] = "alone"
    for a, b in zip(getattr(core, name)(rewards, m, index), ORIG[name](rewards.clone(), m, index), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_torch_functional(patched, dtype, gen):
    z = rand(3, 7, 301, gen=gen, scale=2.0).to(dtype)
    y = torch.randint(0, 301, (3, 7), generator=gen)
    pairs = [
        (
            verl_F.logprobs_from_logits(z, y),
            ORIG["logprobs_from_logits"](z, y),
            ORIG["logprobs_from_logits"](z.double(), y),
        ),
        (verl_F.entropy_from_logits(z), ORIG["entropy_from_logits"](z), ORIG["entropy_from_logits"](z.double())),
    ]
    for new, old, truth in pairs:
        assert new.dtype == old.dtype
        if dtype == torch.float32:
            torch.testing.assert_close(new, old, rtol=1e-5, atol=1e-5)
        else:
            assert_within_budget(new, old, truth, dtype)
    x, m = rand(5, 20, gen=gen), _mask(5, 20, gen)
    torch.testing.assert_close(verl_F.masked_whiten(x, m), ORIG["masked_whiten"](x, m), rtol=1e-5, atol=1e-5)


def test_fused_linear_for_ppo(patched, gen):
    h, w = rand(2, 9, 32, gen=gen), rand(500, 32, gen=gen, scale=0.2)
    ids = torch.randint(0, 500, (2, 9), generator=gen)
    module = exp_F.FusedLinearForPPO(chunk_size=4)
    new = grad_of(lambda a, b: module(a, b, ids, temperature=0.8), h, w)
    old = grad_of(lambda a, b: ORIG_FUSED(module, a, b, ids, temperature=0.8), h, w)
    for a, b in zip(module(h, w, ids, 0.8), ORIG_FUSED(module, h, w, ids, 0.8), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    for a, b in zip(new, old, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
