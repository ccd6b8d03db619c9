"""Benchmark cases: for each op and size, the inputs and one callable per provider.

Providers: ``crs_fast`` (the backend chosen for the device), ``reference`` (eager PyTorch),
``torch.compile`` (of the reference) and the published implementations where installed: verl,
OpenRLHF (its modules imported with GPU-only dependencies stubbed), TRL, Liger-Kernel (CUDA
only). A provider that cannot run says why in ``Case.unavailable``. Per-token ops time the
forward and, where the op trains, the backward. ``bytes`` is the minimum memory traffic of the
case and ``flops`` its useful floating-point work (used for achieved GB/s or FLOP/s).
"""

import importlib
import os
import types
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from .. import ops
from ..ops import reference as R

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


def _with_backend(fn: Fn, backend: str) -> Fn:
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
    the ops each backend implements: the measurements behind ops._lib.GPU_DISPATCH."""
    from ..ops import _lib

    fn = case.providers.get("crs_fast")
    if device != "cuda" or fn is None:
        return case
    for backend, ops_ in (("triton", _lib.TRITON_OPS), ("cuda", _lib.CUDA_OPS)):
        if case.op not in ops_:
            continue
        why = _lib._why_not(backend, torch.device("cuda"), case.op)
        if why:
            case.unavailable[f"crs_fast[{backend}]"] = why
        else:
            case.providers[f"crs_fast[{backend}]"] = _with_backend(fn, backend)
    return case


def _train(fn: Callable[[], object], *leaves: torch.Tensor) -> Fn:
    """Forward + backward of the first output (plus the second, if it is a tensor)."""

    def step():
        out = fn()
        head = out[0] if isinstance(out, tuple) else out
        total = head.float().sum()
        if isinstance(out, tuple) and len(out) > 1 and torch.is_tensor(out[1]) and out[1].requires_grad:
            total = total + out[1].float().sum()
        torch.autograd.grad(total, leaves)

    return step


def _compiled(fn: Callable[[], object]) -> Callable[[], object]:
    return torch.compile(fn, dynamic=False)


class _Cfg(types.SimpleNamespace):
    def get(self, key, default=None):
        return getattr(self, key, default)


def _try(module: str) -> types.ModuleType | str:
    """The module, or why it cannot be imported."""
    try:
        return importlib.import_module(module)
    except Exception as exc:  # noqa: BLE001 - any import failure makes the provider unavailable
        return f"{module} not importable ({type(exc).__name__}: {exc})"[:160]


def _openrlhf() -> tuple[types.ModuleType, ...] | str:
    try:
        from ..integrations.cpu_import import import_openrlhf_modules

        return import_openrlhf_modules()
    except Exception as exc:  # noqa: BLE001 - any import failure makes the provider unavailable
        return f"OpenRLHF not importable ({type(exc).__name__}: {exc})"[:160]


def _token_inputs(B: int, T: int, device: str):
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


def _add(case: Case, name: str, builder: Callable[[], Fn] | str) -> None:
    if isinstance(builder, str):
        case.unavailable[name] = builder
        return
    try:
        case.providers[name] = builder()
    except Exception as exc:  # noqa: BLE001 - an unusable provider is reported, not fatal
        case.unavailable[name] = f"{type(exc).__name__}: {exc}"[:160]


def token_cases(op: str, B: int, T: int, device: str, compile_: bool) -> Case:
    """GAE, KL, token rewards, PPO policy and value losses over [B, T] tokens (fp32)."""
    x = _token_inputs(B, T, device)
    n = B * T
    per_token = {
        "gae": 17,
        "kl_penalty": 28,
        "token_rewards": 9,
        "ppo_policy_loss": 30,
        "ppo_value_loss": 30,
        "masked_whiten": 13,
        "reinforce_returns": 9,
        "group_advantages": 0,
    }[op]
    case = Case(op, f"B={B} T={T}", n, per_token * n, 0)
    core = _try("verl.trainer.ppo.core_algos")
    orl = _openrlhf()
    no_compile = "skipped in --quick (compile time)" if not compile_ else None
    mf = x["m"].float()
    if op == "gae":
        ours = lambda: ops.gae(x["r"], x["v"].detach(), x["m"], gamma=0.99, lam=0.95)  # noqa: E731
        ref = lambda: R.gae(x["r"], x["v"].detach(), x["m"], gamma=0.99, lam=0.95)  # noqa: E731
        _add(case, "crs_fast", lambda: ours)
        _add(case, "reference", lambda: ref)
        _add(case, "torch.compile", "not measured: compiling the reference unrolls its T-step Python loop")
        _add(
            case,
            "verl",
            core
            if isinstance(core, str)
            else lambda: lambda: core.compute_gae_advantage_return(x["r"], x["v"].detach(), mf, 0.99, 0.95),
        )
        _add(
            case,
            "openrlhf",
            orl
            if isinstance(orl, str)
            else lambda: (
                lambda: orl[2].RemoteExperienceMaker.get_advantages_and_returns(
                    None, x["v"].detach(), x["r"], mf, 0.99, 0.95
                )
            ),
        )
        return case
    if op == "kl_penalty":
        ref = lambda: R.kl_penalty(x["lp"], x["ref"], kind="k3")  # noqa: E731
        _add(case, "crs_fast", lambda: _train(lambda: ops.kl_penalty(x["lp"], x["ref"], kind="k3"), x["lp"]))
        _add(case, "reference", lambda: _train(ref, x["lp"]))
        _add(case, "torch.compile", no_compile or (lambda: _train(_compiled(ref), x["lp"])))
        _add(
            case,
            "verl",
            core
            if isinstance(core, str)
            else lambda: _train(lambda: core.kl_penalty(x["lp"], x["ref"], "low_var_kl"), x["lp"]),
        )
        _add(
            case,
            "openrlhf",
            orl
            if isinstance(orl, str)
            else lambda: _train(lambda: orl[0].compute_approx_kl(x["lp"], x["ref"], kl_estimator="k3"), x["lp"]),
        )
        return case
    if op == "token_rewards":
        kl = x["ref"]
        ref = lambda: R.token_rewards(x["scores"], kl, x["m"], beta=0.05, clip=(-5.0, 5.0))  # noqa: E731
        _add(case, "crs_fast", lambda: lambda: ops.token_rewards(x["scores"], kl, x["m"], beta=0.05, clip=5.0))
        _add(case, "reference", lambda: ref)
        _add(case, "torch.compile", "not measured: the reference indexes rows data-dependently (graph breaks)")
        _add(
            case,
            "openrlhf",
            orl
            if isinstance(orl, str)
            else lambda: (
                lambda: orl[0].compute_reward(x["scores"], 0.05, kl * mf, action_mask=mf, reward_clip_range=(-5, 5))
            ),
        )
        return case
    if op == "ppo_policy_loss":
        kw = dict(clip_low=0.2, clip_high=0.28, dual_clip=3.0)
        ref = lambda: R.ppo_policy_loss(x["lp"], x["old"], x["adv"], x["m"], **kw)[0]  # noqa: E731
        cfg = _Cfg(clip_ratio=0.2, clip_ratio_low=0.2, clip_ratio_high=0.28, clip_ratio_c=3.0, global_batch_info={})
        _add(
            case,
            "crs_fast",
            lambda: _train(lambda: ops.ppo_policy_loss(x["lp"], x["old"], x["adv"], x["m"], **kw)[0], x["lp"]),
        )
        _add(case, "reference", lambda: _train(ref, x["lp"]))
        _add(case, "torch.compile", no_compile or (lambda: _train(_compiled(ref), x["lp"])))
        _add(
            case,
            "verl",
            core
            if isinstance(core, str)
            else lambda: _train(
                lambda: core.compute_policy_loss_vanilla(x["old"], x["lp"], x["adv"], mf, "token-mean", cfg)[0], x["lp"]
            ),
        )
        if not isinstance(orl, str):
            pl = orl[1].PolicyLoss(clip_eps_low=0.2, clip_eps_high=0.28, dual_clip=3.0)
        _add(
            case,
            "openrlhf",
            orl if isinstance(orl, str) else lambda: _train(lambda: pl(x["lp"], x["old"], x["adv"], mf)[0], x["lp"]),
        )
        return case
    if op == "ppo_value_loss":
        ref = lambda: R.ppo_value_loss(x["v"], x["old_v"], x["ret"], x["m"], clip=0.2)[0]  # noqa: E731
        _add(
            case,
            "crs_fast",
            lambda: _train(lambda: ops.ppo_value_loss(x["v"], x["old_v"], x["ret"], x["m"])[0], x["v"]),
        )
        _add(case, "reference", lambda: _train(ref, x["v"]))
        _add(case, "torch.compile", no_compile or (lambda: _train(_compiled(ref), x["v"])))
        _add(
            case,
            "verl",
            core
            if isinstance(core, str)
            else lambda: _train(lambda: core.compute_value_loss(x["v"], x["ret"], x["old_v"], mf, 0.2)[0], x["v"]),
        )
        if not isinstance(orl, str):
            vl = orl[1].ValueLoss(clip_eps=0.2)
        _add(
            case,
            "openrlhf",
            orl if isinstance(orl, str) else lambda: _train(lambda: vl(x["v"], x["old_v"], x["ret"], mf), x["v"]),
        )
        return case
    raise ValueError(f"unknown token op {op!r}")


def logprob_cases(N: int, V: int, device: str, compile_: bool) -> Case:
    """token_logprobs with entropy, forward + backward, logits [N, V] (fp32 on CPU, bf16 on CUDA)."""
    g = torch.Generator().manual_seed(N + V)
    dt = torch.bfloat16 if device == "cuda" else torch.float32
    z = (torch.randn(N, V, generator=g) * 2).to(device=device, dtype=dt).requires_grad_(True)
    y = torch.randint(0, V, (N,), generator=g).to(device)
    nb = z.element_size()
    case = Case("token_logprobs", f"N={N} V={V} {str(dt)[6:]}", N * V, 3 * nb * N * V, 0)
    ref = lambda: R.token_logprobs(z, y)  # noqa: E731
    _add(case, "crs_fast", lambda: _train(lambda: ops.token_logprobs(z, y, entropy=True), z))
    _add(case, "reference", lambda: _train(ref, z))
    _add(
        case,
        "torch.compile",
        "skipped in --quick (compile time)" if not compile_ else (lambda: _train(_compiled(ref), z)),
    )
    vf = _try("verl.utils.torch_functional")
    _add(
        case,
        "verl",
        vf
        if isinstance(vf, str)
        else lambda: _train(lambda: (vf.logprobs_from_logits(z, y), vf.entropy_from_logits(z)), z),
    )
    tu = _try("trl.trainer.utils")
    _add(
        case,
        "trl",
        tu
        if isinstance(tu, str)
        else lambda: _train(lambda: (tu.selective_log_softmax(z, y), tu.entropy_from_logits(z)), z),
    )
    orl = _openrlhf()
    _add(
        case,
        "openrlhf",
        orl
        if isinstance(orl, str)
        else lambda: _train(lambda: (orl[0].log_probs_from_logits(z, y), orl[0].compute_entropy(z)), z),
    )
    return case


def linear_cases(N: int, H: int, V: int, device: str, compile_: bool) -> Case:
    """linear_logprobs with entropy (the fused LM head), forward + backward (fp32 on CPU, bf16 on CUDA)."""
    g = torch.Generator().manual_seed(N + H + V)
    dt = torch.bfloat16 if device == "cuda" else torch.float32
    h = torch.randn(N, H, generator=g).to(device=device, dtype=dt).requires_grad_(True)
    w = (torch.randn(V, H, generator=g) * H**-0.5).to(device=device, dtype=dt).requires_grad_(True)
    y = torch.randint(0, V, (N,), generator=g).to(device)
    case = Case(
        "linear_logprobs",
        f"N={N} H={H} V={V} {str(dt)[6:]}",
        N * V,
        h.element_size() * (N * H + 2 * V * H),
        6 * N * H * V,
        dtype="bf16" if dt == torch.bfloat16 else "fp32",
    )
    ref = lambda: R.linear_logprobs(h, w, y)  # noqa: E731
    _add(case, "crs_fast", lambda: _train(lambda: ops.linear_logprobs(h, w, y, entropy=True), h, w))
    _add(case, "reference", lambda: _train(ref, h, w))
    _add(
        case,
        "torch.compile",
        "skipped in --quick (compile time)" if not compile_ else (lambda: _train(_compiled(ref), h, w)),
    )
    ef = _try("verl.utils.experimental.torch_functional")
    _add(case, "verl", ef if isinstance(ef, str) else lambda: _train(lambda: ef.FusedLinearForPPO()(h, w, y), h, w))
    if device != "cuda":
        _add(case, "liger", "Liger-Kernel's fused linear losses are Triton kernels for CUDA")
    else:
        lg = _try("liger_kernel.chunked_loss")
        _add(case, "liger", lg if isinstance(lg, str) else "not wired: Liger's GRPO loss fuses the loss, not log-probs")
    return case


def topk_cases(B: int, N: int, d: int, device: str, compile_: bool) -> Case:
    """topk_scores (k = 50) of B queries over N items."""
    g = torch.Generator().manual_seed(B + N + d)
    q, items = torch.randn(B, d, generator=g).to(device), torch.randn(N, d, generator=g).to(device)
    case = Case("topk_scores", f"B={B} N={N} d={d}", N, 4 * N * d, 2 * B * N * d)
    ref = lambda: torch.topk(q @ items.T, 50, dim=1)  # noqa: E731
    _add(case, "crs_fast", lambda: lambda: ops.topk_scores(q, items, k=50))
    _add(case, "reference", lambda: ref)
    _add(case, "torch.compile", "skipped in --quick (compile time)" if not compile_ else lambda: _compiled(ref))
    return case


def e2e_case(B: int, T: int, H: int, V: int, device: str) -> Case:
    """One PPO step at a model's head sizes: log-probs and entropy from the LM head, k3 KL to a
    reference, token rewards, GAE, policy and value losses, backward; crs_fast ops against the
    same step built from the references."""
    g = torch.Generator().manual_seed(7)
    n = B * T
    h = torch.randn(n, H, generator=g).to(device).requires_grad_(True)
    w = (torch.randn(V, H, generator=g) * H**-0.5).to(device).requires_grad_(True)
    vh = (torch.randn(H, generator=g) * H**-0.5).to(device).requires_grad_(True)
    y = torch.randint(0, V, (n,), generator=g).to(device)
    x = _token_inputs(B, T, device)
    case = Case("ppo_step", f"B={B} T={T} H={H} V={V}", n, 0, 6 * n * H * V)

    def step(lib):
        if lib is ops:
            lp, ent = ops.linear_logprobs(h, w, y, entropy=True)
        else:
            lp, ent = R.linear_logprobs(h, w, y)
        lp, ent = lp.view(B, T), ent.view(B, T)
        values = (h @ vh).view(B, T)
        kl = lib.kl_penalty(lp, x["ref"], kind="k3")
        if lib is ops:
            rewards = ops.token_rewards(x["scores"], kl.detach(), x["m"], beta=0.05)
            adv, ret = ops.gae(rewards, values.detach(), x["m"], gamma=1.0, lam=0.95)
        else:
            rewards = R.token_rewards(x["scores"], kl.detach(), x["m"], beta=0.05)
            adv, ret = R.gae(rewards, values.detach(), x["m"], gamma=1.0, lam=0.95)
        pl, _ = lib.ppo_policy_loss(lp, lp.detach() + 0.01, adv, x["m"], clip_low=0.2, clip_high=0.28, dual_clip=3.0)
        vl, _ = lib.ppo_value_loss(values, values.detach() + 0.01, ret, x["m"])
        loss = pl + 0.5 * vl + 0.01 * kl.mean() - 0.01 * ent.mean()
        torch.autograd.grad(loss, [h, w, vh])

    _add(case, "crs_fast", lambda: lambda: step(ops))
    _add(case, "reference", lambda: lambda: step(R))
    return case


def all_cases(device: str = "cpu", quick: bool = False, only: list[str] | None = None) -> list[Callable[[], Case]]:
    """Case builders (cases build lazily: inputs are allocated when one runs)."""
    compile_ = not quick
    if quick:
        tok, lp, lin, tk, e2e = (
            [(4, 128), (16, 512)],
            [(64, 4096)],
            [(64, 64, 4096)],
            [(16, 5000, 64)],
            (2, 64, 64, 4096),
        )
    elif device == "cpu":
        tok = [(8, 512), (64, 1024), (256, 4096)]
        lp = [(1024, 32000), (1024, 49152), (512, 128256), (512, 151936)]
        lin = [(1024, 576, 32000), (1024, 576, 49152), (512, 896, 151936)]
        tk = [(64, 100_000, 256), (256, 500_000, 128)]
        e2e = (4, 256, 576, 49152)
    else:
        tok = [(8, 512), (64, 1024), (256, 4096)]
        lp = [(8192, 32000), (8192, 49152), (8192, 128256), (8192, 151936)]
        lin = [(8192, 576, 49152), (8192, 896, 151936), (8192, 4096, 151936)]
        tk = [(1024, 1_000_000, 256)]
        e2e = (8, 1024, 576, 49152)
    builders: list[tuple[str, Callable[[], Case]]] = []
    for op in ("gae", "kl_penalty", "token_rewards", "ppo_policy_loss", "ppo_value_loss"):
        builders += [(op, lambda op=op, B=B, T=T: token_cases(op, B, T, device, compile_)) for B, T in tok]
    builders += [("token_logprobs", lambda N=N, V=V: logprob_cases(N, V, device, compile_)) for N, V in lp]
    builders += [("linear_logprobs", lambda N=N, H=H, V=V: linear_cases(N, H, V, device, compile_)) for N, H, V in lin]
    builders += [("topk_scores", lambda B=B, N=N, d=d: topk_cases(B, N, d, device, compile_)) for B, N, d in tk]
    builders += [("ppo_step", lambda: e2e_case(*e2e, device))]
    return [lambda b=b: per_backend(b(), device) for op, b in builders if not only or op in only]


def case_ops() -> list[str]:
    """Op names the runner knows."""
    return [
        "gae",
        "kl_penalty",
        "token_rewards",
        "ppo_policy_loss",
        "ppo_value_loss",
        "token_logprobs",
        "linear_logprobs",
        "topk_scores",
        "ppo_step",
    ]
