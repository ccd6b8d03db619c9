"""Backend choice: per call, by environment variable, and errors that list every backend."""

import importlib
import pathlib

import pytest
import torch

import crs_fast as cf
from crs_fast import _native

REPO = pathlib.Path(__file__).resolve().parents[2]


def test_tests_use_the_installed_package():
    path = pathlib.Path(cf.__file__).resolve()
    assert REPO / "crs_fast" not in path.parents, f"crs_fast imported from the source tree: {path}"
    assert _native._C is not None, _native.C_ERROR


@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_unavailable_backend_lists_every_backend(backend, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)  # the Triton tests' interpreter would run it
    x = torch.zeros(2, 3)
    with pytest.raises(cf.BackendUnavailableError) as info:
        cf.kl_penalty(x, x, backend=backend)
    msg = str(info.value)
    for name in cf.BACKENDS:
        assert f"  {name}:" in msg
    assert "CUDA tensors" in msg or "triton is not installed" in msg


def test_unknown_backend():
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="backend"):
        cf.kl_penalty(x, x, backend="tpu")


def test_env_var_selects_reference(monkeypatch):
    calls = []
    reference = importlib.import_module("crs_fast.ops.reference")
    original = reference.kl_penalty
    monkeypatch.setattr(reference, "kl_penalty", lambda *a, **k: calls.append(1) or original(*a, **k))
    x = torch.randn(2, 3)
    cf.kl_penalty(x, x)
    assert calls == []
    monkeypatch.setenv("CRS_FAST_BACKEND", "torch")
    cf.kl_penalty(x, x)
    assert calls == [1]
    monkeypatch.setenv("CRS_FAST_BACKEND", "cuda")
    with pytest.raises(cf.BackendUnavailableError):
        cf.kl_penalty(x, x)
    monkeypatch.setenv("CRS_FAST_BACKEND", "bogus")
    with pytest.raises(ValueError, match="CRS_FAST_BACKEND"):
        cf.kl_penalty(x, x)


def test_per_call_backend_overrides_env(monkeypatch):
    monkeypatch.setenv("CRS_FAST_BACKEND", "cuda")
    x = torch.randn(2, 3)
    torch.testing.assert_close(cf.kl_penalty(x, x, backend="cpu"), cf.kl_penalty(x, x, backend="torch"))


def test_torch_backend_matches_cpu_backend():
    g = torch.Generator().manual_seed(1)
    r, v = torch.randn(3, 20, generator=g), torch.randn(3, 20, generator=g)
    m = torch.rand(3, 20, generator=g) > 0.3
    a = cf.gae(r, v, m, gamma=0.9, lam=0.8, backend="cpu")
    b = cf.gae(r, v, m, gamma=0.9, lam=0.8, backend="torch")
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x, y)
