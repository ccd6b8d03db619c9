"""Benchmark cases: for each op and size, the inputs and one callable per provider, one module per
op (``cases/<op>.py``, the PPO losses together in ``ppo_loss``), the sizes here.

Providers: ``crs_fast`` (the backend chosen for the device), ``reference`` (eager PyTorch),
``torch.compile`` (of the reference) and the published implementations where installed: verl,
OpenRLHF (its modules imported with GPU-only dependencies stubbed), TRL, Liger-Kernel (CUDA
only). A provider that cannot run says why in ``Case.unavailable``. Per-token ops time the
forward and, where the op trains, the backward. ``bytes`` is the minimum memory traffic of the
case and ``flops`` its useful floating-point work (used for achieved GB/s or FLOP/s).
"""

from collections.abc import Callable

from . import gae, kl_penalty, linear_logprobs, ppo_loss, ppo_step, token_logprobs, token_rewards, topk_scores
from ._common import Case, per_backend

# op -> (its case builder, which size list of all_cases it takes)
BUILDERS: dict[str, tuple[Callable[..., Case], str]] = {
    "gae": (gae.case, "tok"),
    "kl_penalty": (kl_penalty.case, "tok"),
    "token_rewards": (token_rewards.case, "tok"),
    "ppo_policy_loss": (ppo_loss.policy_case, "tok"),
    "ppo_value_loss": (ppo_loss.value_case, "tok"),
    "token_logprobs": (token_logprobs.case, "lp"),
    "linear_logprobs": (linear_logprobs.case, "lin"),
    "topk_scores": (topk_scores.case, "tk"),
    "ppo_step": (ppo_step.case, "e2e"),
}


def sizes(device: str, quick: bool) -> dict[str, list[tuple[int, ...]]]:
    """Shapes per size list: tok (B, T), lp (N, V), lin (N, H, V), tk (B, N, d), e2e (B, T, H, V)."""
    if quick:
        return {
            "tok": [(4, 128), (16, 512)],
            "lp": [(64, 4096)],
            "lin": [(64, 64, 4096)],
            "tk": [(16, 5000, 64)],
            "e2e": [(2, 64, 64, 4096)],
        }
    if device == "cpu":
        return {
            "tok": [(8, 512), (64, 1024), (256, 4096)],
            "lp": [(1024, 32000), (1024, 49152), (512, 128256), (512, 151936)],
            "lin": [(1024, 576, 32000), (1024, 576, 49152), (512, 896, 151936)],
            "tk": [(64, 100_000, 256), (256, 500_000, 128)],
            "e2e": [(4, 256, 576, 49152)],
        }
    return {
        "tok": [(8, 512), (64, 1024), (256, 4096)],
        "lp": [(8192, 32000), (8192, 49152), (8192, 128256), (8192, 151936)],
        "lin": [(8192, 576, 49152), (8192, 896, 151936), (8192, 4096, 151936)],
        "tk": [(1024, 1_000_000, 256)],
        "e2e": [(8, 1024, 576, 49152)],
    }


def all_cases(device: str = "cpu", quick: bool = False, only: list[str] | None = None) -> list[Callable[[], Case]]:
    """Case builders (cases build lazily: inputs are allocated when one runs), in BUILDERS order."""
    compile_ = not quick
    shapes = sizes(device, quick)
    out: list[Callable[[], Case]] = []
    for op, (build, kind) in BUILDERS.items():
        if only and op not in only:
            continue
        for shape in shapes[kind]:
            args = (*shape, device) if op == "ppo_step" else (*shape, device, compile_)
            out.append(lambda build=build, args=args: per_backend(build(*args), device))
    return out


def case_ops() -> list[str]:
    """Op names the runner knows."""
    return list(BUILDERS)


__all__ = ["BUILDERS", "Case", "all_cases", "case_ops", "sizes"]
