"""Compile every Triton kernel for real GPU targets on a machine without a GPU.

The configurations are not written here: each public launcher is called on ``meta`` tensors (the
shapes and dtypes of a real call, no data, no device) over the choices a user has (dtypes, KL
kinds, GAE modes and variants, top-k sizes, with or without entropy gradients, ...), and every
kernel launch it makes is recorded instead of run: the kernel, the argument types, the
constexprs (tile sizes, branches) and ``num_warps``, exactly as the launcher chose them for a
GPU. Each distinct configuration is then compiled to PTX and cubin for sm_80 and sm_90
(``triton.compile`` with a ``GPUTarget``; no driver needed), its shared memory checked against
the architecture's per-block limit, and ``ptxas -v`` run on its PTX for registers and spills.

    python -m crs_fast.kernels.triton.compile_check --arch 80 90 --out report.json

Not available under ``TRITON_INTERPRET=1`` (the interpreter replaces the compiler). What only a
GPU run can tell: whether the kernels are right and fast there (the runtime also specialises
pointers aligned to 16 bytes, which this check does not assume, so the runtime's variant may
vectorise more and use a few more registers), and the CUDA C++ kernels' behaviour.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf_futures
import dataclasses
import json
import os
import pathlib
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch

# Opt-in shared memory per block (bytes): the compiled kernel must fit.
SMEM_LIMIT = {80: 163 * 1024, 90: 227 * 1024}
_DTYPES = {
    torch.float32: "fp32",
    torch.float16: "fp16",
    torch.bfloat16: "bf16",
    torch.float64: "fp64",
    torch.int64: "i64",
    torch.int32: "i32",
    torch.uint8: "u8",
    torch.int8: "i8",
    torch.bool: "i1",
}


@dataclasses.dataclass(frozen=True)
class Config:
    """One kernel configuration as a launcher chose it: module and kernel name, the type of each
    runtime argument, the constexprs and ``num_warps``."""

    module: str
    kernel: str
    signature: tuple[tuple[str, str], ...]
    constexprs: tuple[tuple[str, Any], ...]
    num_warps: int

    @property
    def label(self) -> str:
        types = ",".join(t for _, t in self.signature if t.startswith("*"))
        cx = ",".join(f"{k}={v}" for k, v in self.constexprs)
        return f"{self.module}.{self.kernel}[{types}]({cx}) w{self.num_warps}"


class _Stop(Exception):
    """Raised by the recorder after a launch: the launcher's later (data-dependent) work is skipped."""


def _type_of(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return "*" + _DTYPES[value.dtype]
    if isinstance(value, bool):
        return "i1"
    if isinstance(value, int):
        return "i32" if -(2**31) <= value < 2**31 else "i64"
    if isinstance(value, float):
        return "fp32"
    raise TypeError(f"cannot type a kernel argument {value!r}")


def record(calls: Callable[[], Iterator[None]]) -> list[Config]:
    """Every distinct kernel launch made by the launcher calls that ``calls`` yields between."""
    from triton.runtime.jit import JITFunction

    seen: dict[Config, None] = {}
    original = JITFunction.run

    def run(self, *args, grid, warmup, **kwargs):  # noqa: ARG001 - the launch is recorded, not run
        names = list(self.arg_names)
        bound = dict(zip(names, args, strict=False)) | {k: v for k, v in kwargs.items() if k in names}
        constexpr_names = {names[i] for i in self.constexprs}
        sig = tuple((n, _type_of(bound[n])) for n in names if n not in constexpr_names)
        cx = tuple((n, bound[n]) for n in names if n in constexpr_names)
        module = self.fn.__module__.rsplit(".", 1)[-1]
        seen[Config(module, self.fn.__name__, sig, cx, int(kwargs.get("num_warps", 4)))] = None
        raise _Stop

    JITFunction.run = run
    try:
        for _ in calls():
            pass
    finally:
        JITFunction.run = original
    return list(seen)


def _meta(*shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.empty(shape, dtype=dtype, device="meta")


def _launch(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
    try:
        fn(*args, **kwargs)
    except _Stop:
        return
    raise RuntimeError(f"{fn.__module__}.{fn.__name__} made no kernel launch")


FLOATS = (torch.float32, torch.bfloat16, torch.float16, torch.float64)  # what the ops accept


def launcher_calls() -> Iterator[None]:
    """Every launcher over the choices its callers can make, at GPU-sized shapes."""
    from . import gae, kl_penalty, linear_logprobs, ppo_loss, token_logprobs, token_rewards, topk_scores

    B, T, N, V, H = 64, 4096, 512, 151_936, 2048
    for dt in FLOATS:
        for kind in range(4):
            for straight in (False, True):
                _launch(kl_penalty.kl_forward, _meta(B, T, dtype=dt), _meta(B, T, dtype=dt), kind, straight, -1.0)
                _launch(
                    kl_penalty.kl_backward,
                    _meta(B, T, dtype=dt),
                    _meta(B, T, dtype=dt),
                    _meta(B, T, dtype=dt),
                    kind,
                    straight,
                    1.0,
                )
                yield
        m = _meta(B, T, dtype=torch.uint8)
        for mode in ("verl", "trl", "openrlhf"):
            for variant in ("rows", "chunked"):
                _launch(gae.gae, _meta(B, T, dtype=dt), _meta(B, T, dtype=dt), m, 0.99, 0.95, mode, True, variant)
                yield
        for policy in (True, False):
            x = [_meta(B, T, dtype=dt) for _ in range(3)]
            p = (0.2, 0.2, 3.0) if policy else (0.2, 0.0, 0.0)
            _launch(ppo_loss.rows_forward, policy, *x, m, *p)
            _launch(ppo_loss.rows_backward, policy, *x, m, _meta(B, dtype=torch.float32), *p)
            yield
        _launch(token_rewards.token_rewards, _meta(B, dtype=dt), _meta(B, T, dtype=dt), m, 0.05, -1.0, 1.0)
        y = _meta(N, dtype=torch.int64)
        _launch(token_logprobs.forward, _meta(N, V, dtype=dt), y, 1.0, -100)
        for with_entropy in (False, True):
            stats = [_meta(N) for _ in range(3)]
            _launch(
                token_logprobs.backward,
                _meta(N, V, dtype=dt),
                y,
                stats[0],
                stats[1] if with_entropy else None,
                *stats[1:],
                1.0,
                -100,
            )
            if dt == torch.float64:
                yield
                continue
            _launch(
                linear_logprobs.backward,
                _meta(N),
                _meta(N) if with_entropy else None,
                _meta(N, H, dtype=dt),
                _meta(V, H, dtype=dt),
                y,
                _meta(N),
                _meta(N),
                1.0,
                -100,
                4096,
            )
            yield
        if dt != torch.float64:  # the op sends float64 to another backend (crs_fast.ops.linear_logprobs)
            _launch(linear_logprobs.forward, _meta(N, H, dtype=dt), _meta(V, H, dtype=dt), y, 1.0, -100)
        n_items = 1_000_000
        for k in sorted(k for k in {1, 10, 16, 17, 33, 50, 64, 100, 128, 200, 256} if k <= topk_scores.MAX_K):
            for d, bias, ex in ((32, None, None), (256, _meta(n_items), _meta(1024, 5, dtype=torch.int64))):
                _launch(topk_scores.topk, _meta(1024, d, dtype=dt), _meta(n_items, d, dtype=dt), k, bias, ex)
                yield


def kernels_in_package() -> set[tuple[str, str]]:
    """(module, kernel) of every @triton.jit function of the package that some launcher launches
    (the ones called as ``name[grid](...)``), read from the source."""
    found = set()
    here = pathlib.Path(__file__).parent
    for path in here.glob("*.py"):
        text = path.read_text()
        for name in re.findall(r"^@triton\.jit\s*\ndef (\w+)", text, flags=re.M):
            if re.search(rf"\b{name}\[", text):
                found.add((path.stem, name))
    return found


def _ptxas_usage(ptx: str, arch: int) -> dict[str, int]:
    """Registers, spill bytes (stores + loads) and stack of the kernel in ``ptx`` from ``ptxas -v``."""
    from triton.backends.nvidia.compiler import get_ptxas

    ptxas = get_ptxas(arch).path
    target = f"sm_{arch}a" if arch == 90 else f"sm_{arch}"
    with tempfile.TemporaryDirectory() as tmp:
        src = pathlib.Path(tmp) / "k.ptx"
        src.write_text(ptx)
        out = subprocess.run(
            [ptxas, "-v", f"--gpu-name={target}", str(src), "-o", str(pathlib.Path(tmp) / "k.cubin")],
            capture_output=True,
            text=True,
            check=True,
        )
    text = out.stderr + out.stdout
    regs = re.search(r"Used (\d+) registers", text)
    spill_st = re.search(r"(\d+) bytes spill stores", text)
    spill_ld = re.search(r"(\d+) bytes spill loads", text)
    stack = re.search(r"(\d+) bytes stack frame", text)
    return {
        "registers": int(regs.group(1)) if regs else -1,
        "spill_bytes": (int(spill_st.group(1)) if spill_st else 0) + (int(spill_ld.group(1)) if spill_ld else 0),
        "stack_bytes": int(stack.group(1)) if stack else 0,
    }


def compile_one(cfg: Config, arch: int) -> dict[str, Any]:
    """Compile ``cfg`` for ``sm_<arch>``: compile time, shared memory, registers, spills, or the error."""
    import importlib

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    kernel = getattr(importlib.import_module(f"{__package__}.{cfg.module}"), cfg.kernel)
    sig = dict(cfg.signature) | {k: "constexpr" for k, _ in cfg.constexprs}
    row: dict[str, Any] = {"config": cfg.label, "kernel": f"{cfg.module}.{cfg.kernel}", "arch": arch}
    start = time.perf_counter()
    try:
        compiled = triton.compile(
            ASTSource(kernel, sig, constexprs=dict(cfg.constexprs)),
            target=GPUTarget("cuda", arch, 32),
            options={"num_warps": cfg.num_warps},
        )
    except Exception as exc:  # noqa: BLE001 - reported per configuration
        row.update(ok=False, error=f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1][:300]}")
        return row
    row["compile_s"] = round(time.perf_counter() - start, 2)
    row["shared_bytes"] = int(compiled.metadata.shared)
    row["smem_limit"] = SMEM_LIMIT[arch]
    row.update(_ptxas_usage(compiled.asm["ptx"], arch))
    row["ok"] = row["shared_bytes"] <= SMEM_LIMIT[arch] and row["registers"] > 0
    return row


def _job(args: tuple[Config, int]) -> dict[str, Any]:
    return compile_one(*args)


def check(
    archs: tuple[int, ...] = (80, 90), workers: int | None = None, progress: bool = True, cold: bool = False
) -> dict[str, Any]:
    """Record every configuration, compile each for every arch (in ``workers`` processes) and
    return the report: one row per (configuration, arch), and the kernels no launch reached.
    ``cold``: compile into an empty Triton cache, so ``compile_s`` is what a first call costs
    (otherwise a configuration already in the cache reports the look-up time)."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        raise RuntimeError("the compile check needs Triton's compiler: unset TRITON_INTERPRET")
    if cold:
        with tempfile.TemporaryDirectory() as tmp:
            saved = os.environ.get("TRITON_CACHE_DIR")
            os.environ["TRITON_CACHE_DIR"] = tmp
            try:
                return check(archs, workers, progress, cold=False) | {"cold_cache": True}
            finally:
                if saved is None:
                    del os.environ["TRITON_CACHE_DIR"]
                else:
                    os.environ["TRITON_CACHE_DIR"] = saved
    configs = record(launcher_calls)
    jobs = [(c, a) for c in configs for a in archs]
    rows: list[dict[str, Any]] = []
    workers = workers or max(1, min(len(jobs), os.cpu_count() or 1))
    start = time.perf_counter()
    with cf_futures.ProcessPoolExecutor(workers) as pool:
        for i, row in enumerate(pool.map(_job, jobs), 1):
            rows.append(row)
            if progress:
                state = "ok" if row["ok"] else f"FAILED {row.get('error', '')}"
                print(
                    f"[{i}/{len(jobs)}] sm_{row['arch']} {row['config']}: {state} {row.get('compile_s', '')}s",
                    flush=True,
                )
    launched = {(c.module, c.kernel) for c in configs}
    return {
        "cold_cache": False,
        "archs": list(archs),
        "triton": __import__("triton").__version__,
        "configurations": len(configs),
        "wall_s": round(time.perf_counter() - start, 1),
        "missing_kernels": sorted(f"{m}.{k}" for m, k in kernels_in_package() - launched),
        "rows": rows,
    }


def markdown(report: dict[str, Any]) -> str:
    """A table per kernel: worst case over its configurations, per architecture."""
    from ..._markdown import table

    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for r in report["rows"]:
        groups.setdefault((r["kernel"], r["arch"]), []).append(r)
    rows = []
    for (kernel, arch), rs in sorted(groups.items()):
        ok = [r for r in rs if "shared_bytes" in r]
        rows.append(
            (
                kernel,
                f"sm_{arch}",
                len(rs),
                sum(not r["ok"] for r in rs),
                f"{max((r['shared_bytes'] for r in ok), default=0) / 1024:.0f} ({SMEM_LIMIT[arch] // 1024})",
                max((r["registers"] for r in ok), default=0),
                sum(r["spill_bytes"] for r in ok),
                f"{max((r['compile_s'] for r in ok), default=0):.1f}",
            )
        )
    header = ("kernel", "arch", "configs", "failed", "max shared KiB (limit)", "max registers", "spill bytes")
    title = (
        f"Triton {report['triton']}: {report['configurations']} configurations x sm_"
        + ", sm_".join(map(str, report["archs"]))
        + f", compiled in {report['wall_s']} s wall"
        + (" from an empty cache (compile times of a first call)." if report.get("cold_cache") else ".")
    )
    return title + "\n\n" + table((*header, "max compile s"), rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", type=int, nargs="+", default=[80, 90], choices=sorted(SMEM_LIMIT))
    parser.add_argument("--out", type=pathlib.Path, help="write the report as JSON (and .md beside it)")
    parser.add_argument("--workers", type=int, help="compile processes (default: one per core)")
    parser.add_argument("--cold", action="store_true", help="an empty Triton cache: compile times of a first call")
    args = parser.parse_args(argv)
    if args.workers is not None and args.workers < 1:
        parser.error(f"--workers must be >= 1, got {args.workers}")
    try:
        report = check(tuple(args.arch), args.workers, cold=args.cold)
    except RuntimeError as exc:  # TRITON_INTERPRET=1
        parser.error(str(exc))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
        args.out.with_suffix(".md").write_text(markdown(report))
    print(markdown(report))
    failed = [r for r in report["rows"] if not r["ok"]]
    for r in failed:
        print(
            f"FAILED sm_{r['arch']} {r['config']}: {r.get('error') or 'shared memory over the limit'}", file=sys.stderr
        )
    if report["missing_kernels"]:
        print(f"kernels no launcher call reached: {report['missing_kernels']}", file=sys.stderr)
    return 1 if failed or report["missing_kernels"] else 0


if __name__ == "__main__":
    sys.exit(main())
