"""Speed of each framework's functions, original against crs_fast-patched, in one process on
the same inputs (CPU, fp32, median of repetitions). Writes bench/results/integrations-<name>-<date>.json.

OpenRLHF's modules are imported with its GPU-only dependencies stubbed (crs_fast.integrations.cpu_import)."""

import argparse
import datetime
import json
import pathlib
import types

import numpy as np
import torch

from crs_fast._timing import median_seconds

ROOT = pathlib.Path(__file__).resolve().parents[1]
B, T, N, V = 64, 1024, 2048, 49152


class _Cfg(types.SimpleNamespace):
    def get(self, key, default=None):
        return getattr(self, key, default)


def _inputs():
    g = torch.Generator().manual_seed(0)
    m = (torch.rand(B, T, generator=g) > 0.2).float()
    lp = (torch.randn(B, T, generator=g) * 0.3).requires_grad_(True)
    return dict(
        g=g,
        m=m,
        lp=lp,
        old=lp.detach() + torch.randn(B, T, generator=g) * 0.3,
        adv=torch.randn(B, T, generator=g),
        r=torch.randn(B, T, generator=g),
        v=torch.randn(B, T, generator=g).requires_grad_(True),
        ref=torch.randn(B, T, generator=g),
        logits=torch.randn(N, V, generator=g).requires_grad_(True),
        labels=torch.randint(0, V, (N,), generator=g),
    )


def _grad(fn, *leaves):
    def step():
        out = fn()
        out = out[0] if isinstance(out, tuple) else out
        torch.autograd.grad(out.float().sum(), leaves)

    return step


def verl_cases(x):
    import verl.trainer.ppo.core_algos as core
    import verl.utils.torch_functional as F

    cfg = _Cfg(clip_ratio=0.2, clip_ratio_low=None, clip_ratio_high=None, clip_ratio_c=3.0, global_batch_info={})
    return [
        (
            "compute_gae_advantage_return",
            lambda: core.compute_gae_advantage_return(x["r"], x["v"].detach(), x["m"], 0.99, 0.95),
        ),
        ("kl_penalty low_var_kl fwd+bwd", _grad(lambda: core.kl_penalty(x["lp"], x["ref"], "low_var_kl"), x["lp"])),
        (
            "compute_policy_loss_vanilla fwd+bwd",
            _grad(
                lambda: core.compute_policy_loss_vanilla(x["old"], x["lp"], x["adv"], x["m"], "token-mean", cfg),
                x["lp"],
            ),
        ),
        (
            "compute_value_loss fwd+bwd",
            _grad(lambda: core.compute_value_loss(x["v"], x["r"], x["ref"], x["m"], 0.2), x["v"]),
        ),
        ("logprobs_from_logits fwd+bwd", _grad(lambda: F.logprobs_from_logits(x["logits"], x["labels"]), x["logits"])),
        ("entropy_from_logits fwd+bwd", _grad(lambda: F.entropy_from_logits(x["logits"]), x["logits"])),
        (
            "compute_grpo_outcome_advantage",
            lambda: core.compute_grpo_outcome_advantage(x["r"], x["m"], np.arange(B) // 8),
        ),
    ]


def openrlhf_cases(x):
    from crs_fast.integrations.cpu_import import import_openrlhf_modules

    utils, loss, em = import_openrlhf_modules()
    pl, vl = loss.PolicyLoss(dual_clip=3.0), loss.ValueLoss(clip_eps=0.2)
    return [
        (
            "compute_approx_kl k3 fwd+bwd",
            _grad(lambda: utils.compute_approx_kl(x["lp"], x["ref"], kl_estimator="k3"), x["lp"]),
        ),
        ("PolicyLoss fwd+bwd", _grad(lambda: pl(x["lp"], x["old"], x["adv"], x["m"]), x["lp"])),
        ("ValueLoss fwd+bwd", _grad(lambda: vl(x["v"], x["ref"], x["r"], x["m"]), x["v"])),
        (
            "log_probs_from_logits fwd+bwd",
            _grad(lambda: utils.log_probs_from_logits(x["logits"], x["labels"]), x["logits"]),
        ),
        (
            "get_advantages_and_returns",
            lambda: em.RemoteExperienceMaker.get_advantages_and_returns(
                None, x["v"].detach(), x["r"], x["m"], 0.99, 0.95
            ),
        ),
    ]


def trl_cases(x):
    import trl.trainer.utils as tu

    return [
        (
            "selective_log_softmax fwd+bwd",
            _grad(lambda: tu.selective_log_softmax(x["logits"], x["labels"]), x["logits"]),
        ),
        ("entropy_from_logits fwd+bwd", _grad(lambda: tu.entropy_from_logits(x["logits"]), x["logits"])),
    ]


def run(reps: int) -> list[dict]:
    import crs_fast.integrations.openrlhf as co
    import crs_fast.integrations.trl as ct
    import crs_fast.integrations.verl as cv

    x = _inputs()
    rows = []
    for framework, cases, module in (
        ("verl", verl_cases, cv),
        ("openrlhf", openrlhf_cases, co),
        ("trl", trl_cases, ct),
    ):
        names = [name for name, _ in cases(x)]
        for i, name in enumerate(names):
            n = max(2, reps // 4) if "logits" in name or "log_softmax" in name else reps
            t_orig = median_seconds(cases(x)[i][1], warmup=1, reps=n)
            with module.patched():
                t_new = median_seconds(cases(x)[i][1], warmup=1, reps=n)
            rows.append(
                dict(
                    framework=framework,
                    function=name,
                    original_ms=t_orig * 1e3,
                    patched_ms=t_new * 1e3,
                    speedup=t_orig / t_new,
                )
            )
            print(
                f"{framework:<9} {name:<40} {t_orig * 1e3:9.2f} ms -> {t_new * 1e3:8.2f} ms  {t_orig / t_new:6.1f}x",
                flush=True,
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--name", default="cpu")
    args = parser.parse_args()
    rows = run(args.reps)
    out = ROOT / "bench" / "results" / f"integrations-{args.name}-{datetime.date.today().isoformat()}.json"
    out.write_text(
        json.dumps(
            dict(shapes=dict(B=B, T=T, N=N, V=V), threads=torch.get_num_threads(), torch=torch.__version__, rows=rows),
            indent=2,
        )
        + "\n"
    )
    print(f"written {out}")


if __name__ == "__main__":
    main()
