"""The benchmark runner: ``crs-fast bench`` or ``python -m bench.run``.

Times every case's providers in one process on the same inputs (median and the 20th/80th
percentiles after warm-up), measures the machine's limits in the same run, measures peak extra
memory per case (CUDA: ``max_memory_allocated``; CPU: a fresh subprocess per case, peak RSS above
its idle level), and writes ``<name>-<date>.json``, a Markdown table and PNG plots. A benchmark
never fails on speed; it reports.
"""

import argparse
import datetime
import json
import os
import pathlib
import platform
import statistics
import subprocess
import sys
import tempfile
import time

import torch

from .._timing import peak_rss_extra_bytes
from . import limits
from .cases import Case, all_cases, case_ops


def _times(fn, device: str, min_time: float, max_reps: int) -> list[float]:
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    fn()  # warm-up (and compilation)
    sync()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < max_reps and (len(times) < 3 or time.perf_counter() - start < min_time):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return times


def _pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * (len(s) - 1) + 0.5))]


def _memory(index: int, provider: str, args: argparse.Namespace) -> float | None:
    """Peak extra memory (MiB) of one call of a provider, in a fresh process (CPU) or here (CUDA)."""
    if args.device == "cuda":
        case = all_cases(args.device, args.quick, args.ops)[index]()
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        case.providers[provider]()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    cmd = (
        [
            sys.executable,
            "-m",
            "crs_fast.benchmarks.run",
            "--memory-case",
            str(index),
            "--provider",
            provider,
            "--device",
            args.device,
        ]
        + (["--quick"] if args.quick else [])
        + (["--ops", *args.ops] if args.ops else [])
    )
    # not from the repository root, whose source tree (first on sys.path with -m) has no kernels
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=tempfile.gettempdir())
    if out.returncode != 0:
        return None
    return int(out.stdout.strip().splitlines()[-1]) / 2**20


def _rows(case: Case, index: int, lim: dict, args: argparse.Namespace, memory: bool, progress) -> list[dict]:
    rows = []
    for name, fn in case.providers.items():
        progress(f"{case.op} {case.shape} {name}")
        try:
            times = _times(fn, args.device, args.min_time, args.max_reps)
        except Exception as exc:  # noqa: BLE001 - a provider that fails is reported, the run goes on
            case.unavailable[name] = f"failed: {type(exc).__name__}: {exc}"[:160]
            continue
        med = statistics.median(times)
        row = dict(
            op=case.op,
            shape=case.shape,
            size=case.size,
            provider=name,
            median_ms=med * 1e3,
            p20_ms=_pct(times, 0.2) * 1e3,
            p80_ms=_pct(times, 0.8) * 1e3,
            reps=len(times),
        )
        if case.flops:
            row["achieved_gflops"] = case.flops / med / 1e9
            peak = lim["matmul_bf16_flops"] if getattr(case, "dtype", "fp32") == "bf16" else lim["matmul_fp32_flops"]
            row["fraction_of_limit"] = case.flops / med / peak
        elif case.bytes:
            row["achieved_gb_s"] = case.bytes / med / 1e9
            row["fraction_of_limit"] = case.bytes / med / lim["copy_bytes_per_s"]
        if memory and name != "torch.compile":
            row["peak_extra_mib"] = _memory(index, name, args)
        rows.append(row)
    by = {r["provider"]: r["median_ms"] for r in rows}
    base = {k: v for k, v in by.items() if not k.startswith("crs_fast")}  # crs_fast[backend] rows are ours
    for r in rows:
        mine = r["provider"]
        if mine.startswith("crs_fast"):
            r["speedup_vs"] = {k: v / by[mine] for k, v in base.items()}
            if base:
                best = min(base, key=base.get)
                r["best_baseline"], r["speedup_vs_best"] = best, base[best] / by[mine]
    for name, why in case.unavailable.items():
        rows.append(dict(op=case.op, shape=case.shape, size=case.size, provider=name, unavailable=why))
    return rows


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _markdown(result: dict) -> str:
    lim = result["limits"]
    lines = [
        f"# crs_fast benchmarks: {result['machine']} ({result['date']})",
        "",
        f"{result['processor']}, {result['threads']} threads, torch {result['torch']}, commit {result['commit'][:10]}."
        f" Measured limits: copy {lim['copy_bytes_per_s'] / 1e9:.1f} GB/s, matmul fp32 "
        f"{lim['matmul_fp32_flops'] / 1e9:.0f} GFLOP/s, bf16 {lim['matmul_bf16_flops'] / 1e9:.0f} GFLOP/s.",
        "",
        "| op | shape | provider | median ms (p20-p80) | crs_fast speedup | achieved | of limit | peak extra MiB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        if "unavailable" in r:
            continue
        ach = (
            f"{r['achieved_gflops']:.1f} GFLOP/s"
            if "achieved_gflops" in r
            else f"{r['achieved_gb_s']:.1f} GB/s"
            if "achieved_gb_s" in r
            else ""
        )
        frac = f"{r['fraction_of_limit']:.0%}" if "fraction_of_limit" in r else ""
        sp = ", ".join(f"{v:.2f}x {k}" for k, v in r.get("speedup_vs", {}).items())
        mem = r.get("peak_extra_mib")
        lines.append(
            f"| {r['op']} | {r['shape']} | {r['provider']} | {r['median_ms']:.3f} ({r['p20_ms']:.3f}-"
            f"{r['p80_ms']:.3f}) | {sp} | {ach} | {frac} | {'' if mem is None else f'{mem:.1f}'} |"
        )
    missing = sorted({(r["provider"], r["unavailable"]) for r in result["rows"] if "unavailable" in r})
    if missing:
        lines += ["", "Providers not measured:", ""] + [f"- {p}: {why}" for p, why in missing]
    return "\n".join(lines) + "\n"


def _plots(result: dict, stem: pathlib.Path) -> list[pathlib.Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in result["rows"] if "unavailable" not in r]
    ops = [op for op in case_ops() if any(r["op"] == op for r in rows)]
    out = []
    for kind in ("speedup", "memory"):
        cols = 3
        fig, axes = plt.subplots(
            (len(ops) + cols - 1) // cols, cols, figsize=(13, 3.4 * ((len(ops) + cols - 1) // cols)), squeeze=False
        )
        for ax, op in zip(axes.flat, ops, strict=False):
            mine = sorted((r for r in rows if r["op"] == op and r["provider"] == "crs_fast"), key=lambda r: r["size"])
            if kind == "speedup":
                for base in sorted({k for r in mine for k in r.get("speedup_vs", {})}):
                    pts = [(r["size"], r["speedup_vs"][base]) for r in mine if base in r.get("speedup_vs", {})]
                    ax.plot(*zip(*pts, strict=True), marker="o", label=f"vs {base}")
                ax.axhline(1.0, color="grey", lw=0.8, ls="--")
                ax.set_ylabel("crs_fast speedup (x)")
                if max((v for r in mine for v in r.get("speedup_vs", {}).values()), default=1) > 30:
                    ax.set_yscale("log")
            else:
                for prov in sorted({r["provider"] for r in rows if r["op"] == op}):
                    pts = sorted(
                        (r["size"], r["peak_extra_mib"])
                        for r in rows
                        if r["op"] == op and r["provider"] == prov and r.get("peak_extra_mib") is not None
                    )
                    if pts:
                        ax.plot(*zip(*pts, strict=True), marker="o", label=prov)
                ax.set_ylabel("peak extra memory (MiB)")
            ax.set_xscale("log")
            ax.set_title(op)
            ax.set_xlabel("size (tokens, logits, items)")
            ax.legend(fontsize=7)
        for ax in list(axes.flat)[len(ops) :]:
            ax.axis("off")
        fig.suptitle(f"crs_fast {kind}: {result['machine']} ({result['date']})")
        fig.tight_layout()
        path = stem.with_name(f"{stem.name}-{kind}.png")
        fig.savefig(path, dpi=90)
        plt.close(fig)
        out.append(path)
    return out


def replot(json_path: pathlib.Path) -> list[pathlib.Path]:
    """Redraw the PNG plots of a results file."""
    return _plots(json.loads(json_path.read_text()), json_path.with_suffix(""))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The runner's command line."""
    p = argparse.ArgumentParser(
        prog="crs-fast bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="small shapes, no torch.compile, memory of one op (CI smoke)")
    p.add_argument("--ops", nargs="+", choices=case_ops(), help="only these ops")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--name", help="machine label for the file names (default: the device)")
    p.add_argument("--out", type=pathlib.Path, help="results folder (default: bench/results if present, else .)")
    p.add_argument("--no-memory", dest="memory", action="store_false", help="skip peak-memory measurements")
    p.add_argument(
        "--min-time", type=float, default=None, help="seconds of timing per provider (default 1, quick 0.05)"
    )
    p.add_argument("--max-reps", type=int, default=50)
    p.add_argument("--memory-case", type=int, help=argparse.SUPPRESS)
    p.add_argument("--provider", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.min_time is None:
        args.min_time = 0.05 if args.quick else 1.0
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device is available")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the benchmarks; returns 0 (speed never fails a run)."""
    args = parse_args(argv)
    if args.memory_case is not None:  # child process of a CPU memory measurement
        case = all_cases(args.device, args.quick, args.ops)[args.memory_case]()
        fn = case.providers[args.provider]
        print(peak_rss_extra_bytes(fn))
        return 0
    from rich.console import Console
    from rich.progress import Progress

    console = Console(stderr=True)
    from .. import _native
    from ..ops import _dispatch

    backend = _dispatch.resolve_backend("", torch.device(args.device))
    if args.device == "cpu" and backend != "cpu":
        console.print(
            f"[bold red]crs_fast's compiled kernels did not load ({_native.C_ERROR}); the crs_fast rows "
            "below measure the reference, not the kernels[/]"
        )
    lim = limits.measure(args.device, args.quick)
    console.print(
        f"limits: copy {lim['copy_bytes_per_s'] / 1e9:.1f} GB/s, fp32 matmul "
        f"{lim['matmul_fp32_flops'] / 1e9:.0f} GFLOP/s"
    )
    builders = all_cases(args.device, args.quick, args.ops)
    rows = []
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("benchmarks", total=len(builders))
        for index, build in enumerate(builders):
            case = build()
            # the quick smoke run exercises the memory path on one op only
            memory = args.memory and (not args.quick or case.op == "linear_logprobs")
            rows += _rows(case, index, lim, args, memory, lambda text: progress.update(task, description=text))
            progress.advance(task)
            del case
    name = args.name or (args.device if args.device == "cpu" else torch.cuda.get_device_name().replace(" ", "-"))
    date = datetime.date.today().isoformat()
    result = dict(
        machine=name,
        date=date,
        processor=platform.processor() or platform.machine(),
        threads=torch.get_num_threads(),
        torch=torch.__version__,
        python=platform.python_version(),
        commit=_commit(),
        quick=args.quick,
        device=args.device,
        crs_fast_backend=backend,
        limits=lim,
        rows=rows,
        host=platform.node(),
        cpu_count=os.cpu_count(),
    )
    out_dir = args.out or (pathlib.Path("bench/results") if pathlib.Path("bench").is_dir() else pathlib.Path("."))
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = out_dir / f"{name}{'-quick' if args.quick else ''}-{date}"
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    stem.with_suffix(".md").write_text(_markdown(result))
    pngs = _plots(result, stem)
    console.print(_markdown(result))
    console.print(f"written {stem.with_suffix('.json')}, {stem.with_suffix('.md')}, " + ", ".join(map(str, pngs)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
