"""How close each patched framework function is to the framework's own, per dtype: whether the
outputs (and gradients) are bit-equal, and the largest error of each against the float64 truth
(the framework's own function run on the same values in float64). CPU, one process.

    python bench/drop_in_accuracy.py        # writes bench/results/drop-in-accuracy.{json,md}

OpenRLHF's modules are imported with its GPU-only dependencies stubbed (crs_fast.integrations.cpu_import)."""

import argparse
import json
import pathlib
from collections.abc import Callable

import numpy as np
import torch

from crs_fast._markdown import table

ROOT = pathlib.Path(__file__).resolve().parents[1]
B, T, N, V = 16, 256, 256, 4096
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class _Cfg(dict):
    def __getattr__(self, key):
        return self.get(key)


def _base() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return dict(
        m=(torch.rand(B, T, generator=g) > 0.2).double(),
        lp=torch.randn(B, T, generator=g, dtype=torch.float64) * 0.3 - 1.0,
        dold=torch.randn(B, T, generator=g, dtype=torch.float64) * 0.3,
        adv=torch.randn(B, T, generator=g, dtype=torch.float64),
        r=torch.randn(B, T, generator=g, dtype=torch.float64),
        v=torch.randn(B, T, generator=g, dtype=torch.float64),
        ref=torch.randn(B, T, generator=g, dtype=torch.float64) * 0.3 - 1.0,
        logits=torch.randn(N, V, generator=g, dtype=torch.float64) * 2,
        labels=torch.randint(0, V, (N,), generator=g),
    )


def _cast(base: dict[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The inputs in ``dtype``; float64 versions hold the same (rounded) values, so the truth is
    the exact answer for the inputs the low-precision run saw."""
    x = {}
    for k, t in base.items():
        x[k] = t if not t.is_floating_point() or k == "m" else t.to(dtype).to(torch.float64)
    x["old"] = (x["lp"] + x["dold"]).to(dtype).to(torch.float64)
    return x


# (name, function of the inputs returning a tensor or a tuple, names of the inputs differentiated)
Case = tuple[str, Callable[[dict], object], tuple[str, ...]]


def verl_cases() -> list[Case]:
    import verl.trainer.ppo.core_algos as core
    import verl.utils.torch_functional as F

    cfg = _Cfg(clip_ratio=0.2, clip_ratio_low=None, clip_ratio_high=None, clip_ratio_c=3.0, global_batch_info={})
    return [
        (
            "compute_gae_advantage_return",
            lambda x: core.compute_gae_advantage_return(x["r"], x["v"], x["m"], 0.99, 0.95),
            (),
        ),
        ("kl_penalty low_var_kl", lambda x: core.kl_penalty(x["lp"], x["ref"], "low_var_kl"), ("lp",)),
        ("kl_penalty kl", lambda x: core.kl_penalty(x["lp"], x["ref"], "kl"), ("lp",)),
        (
            "compute_policy_loss_vanilla",
            lambda x: core.compute_policy_loss_vanilla(x["old"], x["lp"], x["adv"], x["m"], "token-mean", cfg)[:2],
            ("lp",),
        ),
        ("compute_value_loss", lambda x: core.compute_value_loss(x["v"], x["r"], x["ref"], x["m"], 0.2), ("v",)),
        ("logprobs_from_logits", lambda x: F.logprobs_from_logits(x["logits"], x["labels"]), ("logits",)),
        ("entropy_from_logits", lambda x: F.entropy_from_logits(x["logits"]), ("logits",)),
        ("masked_whiten", lambda x: F.masked_whiten(x["r"], x["m"]), ()),
        (
            "compute_grpo_outcome_advantage",
            lambda x: core.compute_grpo_outcome_advantage(x["r"], x["m"], np.arange(B) // 4),
            (),
        ),
    ]


def openrlhf_cases() -> list[Case]:
    from crs_fast.integrations.cpu_import import import_openrlhf_modules

    utils, loss, em = import_openrlhf_modules()
    pl, vl = loss.PolicyLoss(dual_clip=3.0), loss.ValueLoss(clip_eps=0.2)
    return [
        ("compute_approx_kl k3", lambda x: utils.compute_approx_kl(x["lp"], x["ref"], kl_estimator="k3"), ("lp",)),
        ("PolicyLoss", lambda x: pl(x["lp"], x["old"], x["adv"], x["m"])[0], ("lp",)),
        ("ValueLoss", lambda x: vl(x["v"], x["ref"], x["r"], x["m"]), ("v",)),
        ("log_probs_from_logits", lambda x: utils.log_probs_from_logits(x["logits"], x["labels"]), ("logits",)),
        ("compute_entropy", lambda x: utils.compute_entropy(x["logits"]), ("logits",)),
        (
            "get_advantages_and_returns",
            lambda x: em.RemoteExperienceMaker.get_advantages_and_returns(None, x["v"], x["r"], x["m"], 0.99, 0.95),
            (),
        ),
    ]


def trl_cases() -> list[Case]:
    import trl.trainer.utils as tu

    return [
        ("selective_log_softmax", lambda x: tu.selective_log_softmax(x["logits"], x["labels"]), ("logits",)),
        ("entropy_from_logits", lambda x: tu.entropy_from_logits(x["logits"]), ("logits",)),
    ]


def _tensors(out: object) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        return [t for k in sorted(out) for t in _tensors(out[k])]
    if isinstance(out, (tuple, list)):
        return [t for o in out for t in _tensors(o)]
    return []


def evaluate(fn: Callable[[dict], object], x: dict[str, torch.Tensor], grads: tuple[str, ...], dtype) -> list:
    """Outputs, then the gradient of sum(first output) w.r.t. each of ``grads``."""
    xs = {k: (t.to(dtype) if t.is_floating_point() and k != "m" else t) for k, t in x.items()}
    if dtype != torch.float64 and "m" in xs:
        xs["m"] = x["m"].to(dtype)
    for k in grads:
        xs[k] = xs[k].detach().requires_grad_(True)
    outs = _tensors(fn(xs))
    res = [o.detach() for o in outs]
    if grads:
        res += [g.detach() for g in torch.autograd.grad(outs[0].float().sum(), [xs[k] for k in grads])]
    return res


def _err(a: torch.Tensor, truth: torch.Tensor) -> float:
    return float((a.double() - truth.double()).abs().max()) if a.numel() else 0.0


def run() -> list[dict]:
    import crs_fast.integrations.openrlhf as co
    import crs_fast.integrations.trl as ct
    import crs_fast.integrations.verl as cv

    base = _base()
    rows = []
    for framework, cases, module in (
        ("verl", verl_cases, cv),
        ("openrlhf", openrlhf_cases, co),
        ("trl", trl_cases, ct),
    ):
        for name, fn, grads in cases():
            for label, dtype in DTYPES.items():
                x = _cast(base, dtype)
                row = dict(framework=framework, function=name, dtype=label)
                try:
                    truth = evaluate(fn, x, grads, torch.float64)
                    orig = evaluate(fn, x, grads, dtype)
                    with module.patched():
                        new = evaluate(fn, x, grads, dtype)
                except Exception as exc:  # noqa: BLE001 - reported, e.g. a dtype a function does not take
                    row["error"] = f"{type(exc).__name__}: {str(exc)[:120]}"
                    rows.append(row)
                    print(framework, name, label, row["error"], flush=True)
                    continue
                row["bit_equal"] = all(torch.equal(a, b) for a, b in zip(orig, new, strict=True))
                row["err_framework"] = max(_err(a, t) for a, t in zip(orig, truth, strict=True))
                row["err_crs_fast"] = max(_err(a, t) for a, t in zip(new, truth, strict=True))
                rows.append(row)
                print(
                    f"{framework:<9} {name:<32} {label}  bit-equal {row['bit_equal']!s:<5}  "
                    f"fp64 error: framework {row['err_framework']:.2e}  crs_fast {row['err_crs_fast']:.2e}",
                    flush=True,
                )
    return rows


def markdown(rows: list[dict]) -> str:
    def cells(r: dict) -> tuple:
        if "error" in r:
            return (r["framework"], r["function"], r["dtype"], "-", r["error"], "")
        equal = "yes" if r["bit_equal"] else "no"
        return (
            r["framework"],
            r["function"],
            r["dtype"],
            equal,
            f"{r['err_framework']:.2e}",
            f"{r['err_crs_fast']:.2e}",
        )

    header = ("framework", "function", "dtype", "bit-equal", "max error vs fp64: framework", "crs_fast")
    return table(header, map(cells, rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=pathlib.Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()
    torch.manual_seed(0)
    rows = run()
    args.out.mkdir(parents=True, exist_ok=True)
    meta = dict(shapes=dict(B=B, T=T, N=N, V=V), torch=torch.__version__, outputs="values and gradients")
    (args.out / "drop-in-accuracy.json").write_text(json.dumps(dict(**meta, rows=rows), indent=2) + "\n")
    (args.out / "drop-in-accuracy.md").write_text(
        f"# Drop-in accuracy (CPU; B={B}, T={T}, N={N}, V={V}; `bench/drop_in_accuracy.py`)\n\n"
        "Bit-equal: every output and gradient identical to the framework's own function in that dtype. "
        "Errors: the largest absolute difference from the framework's function run in float64 on the "
        "same (rounded) inputs, over every output and gradient. Where a framework casts to float32 "
        "inside (OpenRLHF's `compute_approx_kl`), its float64 run is a float32 one, so its own fp32 "
        "error reads 0.\n\n" + markdown(rows)
    )
    print(f"written {args.out / 'drop-in-accuracy.md'}")


if __name__ == "__main__":
    main()
