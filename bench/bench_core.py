"""The core-ops measurements of issue 2, on this machine, in one run (the full benchmark suite
is bench/run.py's job). Writes bench/results/core-<machine>-<date>.json and prints a table.

1. GAE (verl mode with whitening, B=64, T=1024): C++ kernel against verl's
   compute_gae_advantage_return.
2. PPO policy loss forward+backward (B=64, T=1024, dual clip): C++ kernel against the eager
   reference.
3. linear_logprobs forward+backward with entropy (N=2048, H=576, V=49,152, fp32): time and
   peak extra memory (fresh subprocess per case) against the unfused path (logits, log_softmax,
   gather, entropy).
"""

import argparse
import datetime
import json
import pathlib
import platform
import subprocess
import sys

import torch

import crs_fast as cf
from crs_fast._timing import median_seconds, peak_rss_extra_bytes
from crs_fast.ops import reference as R

RESULTS = pathlib.Path(__file__).resolve().parent / "results"
N, H, V = 2048, 576, 49152


def _llp_inputs():
    g = torch.Generator().manual_seed(0)
    h = torch.randn(N, H, generator=g).requires_grad_(True)
    w = (torch.randn(V, H, generator=g) * H**-0.5).requires_grad_(True)
    y = torch.randint(0, V, (N,), generator=g)
    return h, w, y


def _llp_step(fused: bool, h, w, y):
    if fused:
        lp, ent = cf.linear_logprobs(h, w, y, entropy=True)
    else:
        lp, ent = R.linear_logprobs(h, w, y)
    torch.autograd.grad((lp.sum() + ent.sum()), [h, w])


def memory_case(name: str) -> int:
    """Peak extra RSS of one linear_logprobs forward+backward (run in a fresh process)."""
    h, w, y = _llp_inputs()
    return peak_rss_extra_bytes(lambda: _llp_step(name == "fused", h, w, y))


def _subprocess_memory(name: str) -> int:
    out = subprocess.run([sys.executable, __file__, "--memory-case", name], check=True, capture_output=True, text=True)
    return int(out.stdout.strip().splitlines()[-1])


def run(reps: int) -> dict:
    g = torch.Generator().manual_seed(0)
    B, T = 64, 1024
    r, v = torch.randn(B, T, generator=g), torch.randn(B, T, generator=g)
    m = torch.rand(B, T, generator=g) > 0.2
    rows = []

    import verl.trainer.ppo.core_algos as core

    mf = m.float()
    t_verl = median_seconds(lambda: core.compute_gae_advantage_return(r, v, mf, 0.99, 0.95), reps=reps)
    t_ours = median_seconds(lambda: cf.gae(r, v, m, gamma=0.99, lam=0.95, mode="verl"), reps=reps * 5)
    rows.append(
        dict(
            case="gae verl+whiten B=64 T=1024",
            baseline="verl compute_gae_advantage_return",
            baseline_s=t_verl,
            ours_s=t_ours,
            speedup=t_verl / t_ours,
            target=">= 50x",
        )
    )

    lp = (torch.randn(B, T, generator=g) * 0.3).requires_grad_(True)
    old, adv = lp.detach() + torch.randn(B, T, generator=g) * 0.3, torch.randn(B, T, generator=g)

    def policy(fn):
        loss, _ = fn(lp, old, adv, m, clip_low=0.2, clip_high=0.28, dual_clip=3.0)
        loss.backward()

    t_ref = median_seconds(lambda: policy(R.ppo_policy_loss), reps=reps * 3)
    t_ours = median_seconds(lambda: policy(cf.ppo_policy_loss), reps=reps * 5)
    rows.append(
        dict(
            case="ppo_policy_loss fwd+bwd B=64 T=1024 dual clip",
            baseline="eager reference",
            baseline_s=t_ref,
            ours_s=t_ours,
            speedup=t_ref / t_ours,
            target=">= 2x",
        )
    )

    h, w, y = _llp_inputs()
    t_unfused = median_seconds(lambda: _llp_step(False, h, w, y), warmup=1, reps=max(3, reps // 2))
    t_fused = median_seconds(lambda: _llp_step(True, h, w, y), warmup=1, reps=max(3, reps // 2))
    mem_unfused, mem_fused = _subprocess_memory("unfused"), _subprocess_memory("fused")
    rows.append(
        dict(
            case=f"linear_logprobs+entropy fwd+bwd N={N} H={H} V={V} fp32",
            baseline="unfused (logits, log_softmax, gather, entropy)",
            baseline_s=t_unfused,
            ours_s=t_fused,
            speedup=t_unfused / t_fused,
            target="time <= 1.2x, memory <= 1/8",
            time_ratio=t_fused / t_unfused,
            baseline_peak_mib=mem_unfused / 2**20,
            ours_peak_mib=mem_fused / 2**20,
            memory_ratio=mem_fused / mem_unfused,
        )
    )
    return dict(
        machine=platform.node(),
        processor=platform.processor() or platform.machine(),
        threads=torch.get_num_threads(),
        torch=torch.__version__,
        crs_fast=cf.__version__,
        commit=_commit(),
        date=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        rows=rows,
    )


def _commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True, cwd=pathlib.Path(__file__).parent
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--memory-case", choices=["fused", "unfused"], help=argparse.SUPPRESS)
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--name", default="cpu", help="machine label for the results file")
    args = parser.parse_args()
    if args.memory_case:
        print(memory_case(args.memory_case))
        return
    result = run(args.reps)
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"core-{args.name}-{datetime.date.today().isoformat()}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    for row in result["rows"]:
        extra = ""
        if "memory_ratio" in row:
            extra = (
                f"  time x{row['time_ratio']:.2f}, peak {row['ours_peak_mib']:.0f} vs "
                f"{row['baseline_peak_mib']:.0f} MiB (x{row['memory_ratio']:.3f})"
            )
        print(
            f"{row['case']:<58} {row['baseline_s'] * 1e3:9.2f} ms -> {row['ours_s'] * 1e3:8.2f} ms "
            f"= {row['speedup']:7.1f}x  [{row['target']}]{extra}"
        )
    print(f"written {path}")


if __name__ == "__main__":
    main()
