"""What every benchmark case is made of: :class:`Case` (inputs built lazily, one callable per
provider, the case's minimum memory traffic and useful FLOPs), timing wrappers (forward +
backward, ``torch.compile``), the published implementations' imports, and the token-level
inputs shared by the per-token ops."""

import importlib
import os
import types
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

Fn = Callable[[], object]


@dataclass
class Case:
    op: str
    shape: str
    size: int  # the x axis of the plots: tokens, or logits N*V, or items
    bytes: int
    flops: int
    providers: dict[str, Fn] = field(default_factory=dict)
    unavailable: dict[str, str] = field(default_factory=dict)
    dtype: str = "fp32"  # the GEMM precision its FLOP fraction is measured against


def with_backend(fn: Fn, backend: str) -> Fn:
    """``fn`` with crs_fast's backend forced (CRS_FAST_BACKEND is read at every op call)."""

    def run():
        old = os.environ.get("CRS_FAST_BACKEND")
        os.environ["CRS_FAST_BACKEND"] = backend
        try:
            return fn()
        finally:
            if old is None:
                del os.environ["CRS_FAST_BACKEND"]
            else:
                os.environ["CRS_FAST_BACKEND"] = old

    return run


def per_backend(case: Case, device: str) -> Case:
    """On CUDA, add ``crs_fast[triton]`` and ``crs_fast[cuda]`` beside the automatic choice, for
    the ops each backend implements: the measurements behind kernels.GPU_DISPATCH."""
    from ... import kernels
    from ...ops import _dispatch

    fn = case.providers.get("crs_fast")
    if device != "cuda" or fn is None:
        return case
    for backend, ops_ in (("triton", kernels.TRITON_OPS), ("cuda", kernels.CUDA_OPS)):
        if case.op not in ops_:
            continue
        why = _dispatch._why_not(backend, torch.device("cuda"), case.op)
        if why:
            case.unavailable[f"crs_fast[{backend}]"] = why
        else:
            case.providers[f"crs_fast[{backend}]"] = with_backend(fn, backend)
    return case


def train(fn: Callable[[], object], *leaves: torch.Tensor) -> Fn:
    """Forward + backward of the first output (plus the second, if it is a tensor)."""

    def step():
        out = fn()
        head = out[0] if isinstance(out, tuple) else out
        total = head.float().sum()
        if isinstance(out, tuple) and len(out) > 1 and torch.is_tensor(out[1]) and out[1].requires_grad:
            total = total + out[1].float().sum()
        torch.autograd.grad(total, leaves)

    return step


def compiled(fn: Callable[[], object]) -> Callable[[], object]:
    return torch.compile(fn, dynamic=False)


class Cfg(types.SimpleNamespace):
    def get(self, key, default=None):
        return getattr(self, key, default)


def try_import(module: str) -> types.ModuleType | str:
    """The module, or why it cannot be imported."""
    try:
        return importlib.import_module(module)
    except Exception as exc:  # noqa: BLE001 - any import failure makes the provider unavailable
        return f"{module} not importable ({type(exc).__name__}: {exc})"[:160]


def openrlhf() -> tuple[types.ModuleType, ...] | str:
    try:
        from ...integrations.cpu_import import import_openrlhf_modules

        return import_openrlhf_modules()
    except Exception as exc:  # noqa: BLE001 - any import failure makes the provider unavailable
        return f"OpenRLHF not importable ({type(exc).__name__}: {exc})"[:160]


def token_inputs(B: int, T: int, device: str):
    g = torch.Generator().manual_seed(B * 10_007 + T)
    t = lambda scale=1.0: (torch.randn(B, T, generator=g) * scale).to(device)  # noqa: E731
    lp = (t(0.3) - 2).requires_grad_(True)
    return dict(
        r=t(),
        v=t().requires_grad_(True),
        old_v=t(),
        ret=t(),
        adv=t(),
        ref=t(0.3) - 2,
        lp=lp,
        old=(lp.detach() + t(0.2)),
        m=(torch.rand(B, T, generator=g) > 0.15).to(device),
        scores=t()[:, 0].contiguous(),
    )


def add(case: Case, name: str, builder: Callable[[], Fn] | str) -> None:
    if isinstance(builder, str):
        case.unavailable[name] = builder
        return
    try:
        case.providers[name] = builder()
    except Exception as exc:  # noqa: BLE001 - an unusable provider is reported, not fatal
        case.unavailable[name] = f"{type(exc).__name__}: {exc}"[:160]


def token_case(op: str, bytes_per_token: int, B: int, T: int, device: str, compile_: bool) -> tuple:
    """A per-token op's case over [B, T] fp32 tokens and what its providers share: (case, inputs,
    verl's core_algos or why not, OpenRLHF's modules or why not, the torch.compile skip reason
    or None, the mask as float)."""
    x = token_inputs(B, T, device)
    n = B * T
    case = Case(op, f"B={B} T={T}", n, bytes_per_token * n, 0)
    no_compile = "skipped in --quick (compile time)" if not compile_ else None
    return case, x, try_import("verl.trainer.ppo.core_algos"), openrlhf(), no_compile, x["m"].float()
