"""GPU kernels checked without a GPU. Every Triton configuration the launchers can choose is
compiled for sm_80 and sm_90 (crs_fast.kernels.triton.compile_check: launches recorded on meta
tensors, compiled by Triton's real compiler) and must fit the per-block shared memory; every
CUDA C++ kernel is compiled by nvcc for both targets and must not spill. Both reports are written
to build/gpu-compile/ (registers, spills, shared memory, compile time)."""

import os
import pathlib
import shutil

import pytest
from frameworks import require

REPORTS = pathlib.Path(__file__).resolve().parents[2] / "build" / "gpu-compile"


@pytest.fixture(scope="module")
def triton_report():
    require("triton")
    if os.environ.get("TRITON_INTERPRET") == "1":
        pytest.skip("the compile check needs Triton's compiler, not its interpreter (unset TRITON_INTERPRET)")
    import json

    from crs_fast.kernels.triton import compile_check

    report = compile_check.check((80, 90), progress=False)
    REPORTS.mkdir(parents=True, exist_ok=True)
    (REPORTS / "triton.json").write_text(json.dumps(report, indent=2) + "\n")
    (REPORTS / "triton.md").write_text(compile_check.markdown(report))
    return report


def test_every_launched_kernel_is_covered(triton_report):
    assert not triton_report["missing_kernels"], "kernels no launcher call reached"
    kernels = {r["kernel"] for r in triton_report["rows"]}
    assert {"topk_scores._topk_kernel", "linear_logprobs._fwd", "gae._chunked", "kl_penalty._kl_bwd"} <= kernels


def test_every_configuration_compiles_for_sm80_and_sm90(triton_report):
    failed = [
        f"sm_{r['arch']} {r['config']}: {r.get('error', 'over the shared memory limit')}"
        for r in triton_report["rows"]
        if not r["ok"]
    ]
    assert not failed, "\n".join(failed)
    assert {r["arch"] for r in triton_report["rows"]} == {80, 90}


def test_shared_memory_fits(triton_report):
    for r in triton_report["rows"]:
        assert 0 <= r["shared_bytes"] <= r["smem_limit"], r["config"]


def test_a_spilling_kernel_says_so(triton_report):
    """A kernel that spills registers says so in its docstring (or is retiled)."""
    import importlib

    for r in triton_report["rows"]:
        if r["spill_bytes"] > 0:
            module, name = r["kernel"].split(".")
            fn = getattr(importlib.import_module(f"crs_fast.kernels.triton.{module}"), name).fn
            assert "spill" in (fn.__doc__ or ""), f"{r['config']} spills {r['spill_bytes']} bytes on sm_{r['arch']}"


def test_cuda_kernels_compile_without_spills():
    nvcc = shutil.which("nvcc") or os.environ.get("CUDACXX")
    if nvcc is None:
        pytest.skip("no nvcc on this machine")
    import json

    import cuda_resources

    rows = cuda_resources.check(nvcc)
    REPORTS.mkdir(parents=True, exist_ok=True)
    (REPORTS / "cuda.json").write_text(json.dumps(rows, indent=2) + "\n")
    (REPORTS / "cuda.md").write_text(cuda_resources.markdown(rows))
    assert not [r for r in rows if "error" in r], [r["error"] for r in rows if "error" in r]
    assert {r["arch"] for r in rows} == {80, 90} and len({r["file"] for r in rows}) == len(cuda_resources.sources())
    assert all(r["registers"] > 0 for r in rows)
    spills = [f"{r['kernel']} sm_{r['arch']}: {r['spill_bytes']} bytes" for r in rows if r["spill_bytes"] > 0]
    assert not spills, spills
