"""Registers, spills, stack and shared memory of every CUDA C++ kernel (csrc/*/*_cuda.cu) for sm_80
and sm_90, from ``nvcc -Xptxas -v`` (no GPU needed). Writes JSON and a Markdown table.

    python bench/cuda_resources.py --out build/cuda-resources.json
"""

import argparse
import json
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor

from crs_fast._markdown import table

ROOT = pathlib.Path(__file__).resolve().parents[1]
ARCHS = (80, 90)


def sources() -> list[pathlib.Path]:
    return sorted((ROOT / "csrc").glob("*/*_cuda.cu"))


def _demangle(names: list[str]) -> dict[str, str]:
    tool = shutil.which("c++filt")
    if tool is None:
        return {n: n for n in names}
    out = subprocess.run([tool], input="\n".join(names), capture_output=True, text=True, check=True).stdout
    return dict(zip(names, out.splitlines(), strict=True))


def compile_file(src: pathlib.Path, nvcc: str = "nvcc") -> list[dict]:
    """One row per (kernel, arch) of ``src``."""
    gencode = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in ARCHS]
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [nvcc, "-std=c++17", "-O3", "-Xptxas", "-v", *gencode, "-I", str(ROOT / "csrc"), "-c", str(src)]
        done = subprocess.run([*cmd, "-o", str(pathlib.Path(tmp) / "k.o")], capture_output=True, text=True)
    if done.returncode != 0:
        return [{"file": src.name, "error": done.stderr.strip()[-2000:]}]
    rows, current = [], None
    for line in done.stderr.splitlines():
        if m := re.search(r"Compiling entry function '(\w+)' for 'sm_(\d+)'", line):
            current = {"file": src.name, "mangled": m.group(1), "arch": int(m.group(2))}
            rows.append(current)
        elif current is not None and (
            m := re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)
        ):
            current.update(stack_bytes=int(m.group(1)), spill_bytes=int(m.group(2)) + int(m.group(3)))
        elif current is not None and (m := re.search(r"Used (\d+) registers", line)):
            current["registers"] = int(m.group(1))
            smem = re.search(r"(\d+) bytes smem", line)
            current["shared_bytes"] = int(smem.group(1)) if smem else 0
    names = _demangle([r["mangled"] for r in rows])
    for r in rows:
        r["kernel"] = names[r.pop("mangled")]
    return rows


def check(nvcc: str = "nvcc") -> list[dict]:
    with ThreadPoolExecutor(2) as pool:
        return [row for rows in pool.map(lambda s: compile_file(s, nvcc), sources()) for row in rows]


def markdown(rows: list[dict]) -> str:
    def cells(r: dict) -> tuple:
        if "error" in r:
            return (r["file"], "COMPILE ERROR", "", "", "", "", "")
        short = r["kernel"].replace("(anonymous namespace)::", "").removeprefix("void ").removeprefix("crs::cuda::")
        usage = (r.get(k, "?") for k in ("registers", "spill_bytes", "stack_bytes", "shared_bytes"))
        return (r["file"], f"`{short.split('(', 1)[0]}`", f"sm_{r['arch']}", *usage)

    header = ("file", "kernel", "arch", "registers", "spill bytes", "stack bytes", "static smem")
    return table(header, map(cells, rows))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=pathlib.Path)
    parser.add_argument("--nvcc", default=shutil.which("nvcc") or "nvcc")
    args = parser.parse_args()
    if shutil.which(args.nvcc) is None:
        parser.error(f"--nvcc {args.nvcc!r}: no such compiler (install the CUDA toolkit or pass its path)")
    rows = check(args.nvcc)
    table = markdown(rows)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(rows, indent=2) + "\n")
        args.out.with_suffix(".md").write_text(table)
    print(table)
    bad = [r for r in rows if "error" in r or r.get("spill_bytes", 0) > 0]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
