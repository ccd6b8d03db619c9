"""The CUDA C++ kernels: compiled into crs_fast._C wherever nvcc was found at build time (CI has it,
so a compile error fails CI), and dispatched for CUDA tensors only."""

import os
import shutil

import pytest
import torch

import crs_fast as cf
from crs_fast import _native, kernels
from crs_fast.ops import _dispatch


def test_cuda_kernels_were_compiled_where_nvcc_exists():
    if shutil.which("nvcc") is None and os.environ.get("CUDACXX") is None:
        pytest.skip("no nvcc on this machine: the build skipped the CUDA kernels (CRS_FAST_CUDA=AUTO)")
    assert _native._C is not None
    assert _native._C.with_cuda, "nvcc is on PATH but crs_fast._C was built without the CUDA kernels"
    for op in kernels.CUDA_OPS:
        assert op in kernels.TRITON_OPS
    names = {n for n in dir(_native._C) if n.startswith("cuda_")}
    assert {"cuda_gae_scan", "cuda_kl_forward", "cuda_logprobs_forward", "cuda_topk_block_merge"} <= names


def test_cuda_backend_refuses_cpu_tensors_and_says_why():
    x = torch.zeros(2, 3)
    with pytest.raises(cf.BackendUnavailableError, match="cuda: it runs CUDA tensors|cuda: this build"):
        cf.kl_penalty(x, x, backend="cuda")


def test_fused_lm_head_is_triton_only():
    assert "linear_logprobs" not in kernels.CUDA_OPS
    assert "Triton-only" in _dispatch._why_not("cuda", torch.device("cuda"), "linear_logprobs")


def test_gpu_dispatch_table_covers_every_gpu_op_with_its_evidence():
    assert set(kernels.GPU_DISPATCH) == set(kernels.TRITON_OPS)
    for op, (backend, evidence) in kernels.GPU_DISPATCH.items():
        assert backend in ("triton", "cuda")
        assert op in (kernels.TRITON_OPS if backend == "triton" else kernels.CUDA_OPS)
        assert evidence, f"{op}: the table must say which measurement backs its entry"
