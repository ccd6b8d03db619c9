"""GPU kernels and the one table of which backend has a launcher for which op.

``LAUNCHERS[op][backend]`` names the module that launches ``op`` on ``backend``: Triton kernels in
``crs_fast/kernels/triton/<op>.py``, CUDA C++ kernels in ``csrc/<op>/<op>_cuda.cu`` launched from
``crs_fast/kernels/cuda/<op>.py``. Modules are imported on first use (Triton may be missing).
``GPU_DISPATCH`` is the automatic choice for CUDA tensors, with the measurement behind it.
Nothing here imports from ``crs_fast.ops``: the ops sit above the kernels.
"""

from __future__ import annotations

import importlib
from types import ModuleType

# op -> backend -> launcher module. Every op's launchers share function names and contracts
# across backends, so an op calls ``launcher(op, backend).forward(...)`` whichever GPU it runs on.
LAUNCHERS: dict[str, dict[str, str]] = {
    "gae": {"triton": "crs_fast.kernels.triton.gae", "cuda": "crs_fast.kernels.cuda.gae"},
    "kl_penalty": {"triton": "crs_fast.kernels.triton.kl_penalty", "cuda": "crs_fast.kernels.cuda.kl_penalty"},
    "token_rewards": {
        "triton": "crs_fast.kernels.triton.token_rewards",
        "cuda": "crs_fast.kernels.cuda.token_rewards",
    },
    "ppo_policy_loss": {"triton": "crs_fast.kernels.triton.ppo_loss", "cuda": "crs_fast.kernels.cuda.ppo_loss"},
    "ppo_value_loss": {"triton": "crs_fast.kernels.triton.ppo_loss", "cuda": "crs_fast.kernels.cuda.ppo_loss"},
    "token_logprobs": {
        "triton": "crs_fast.kernels.triton.token_logprobs",
        "cuda": "crs_fast.kernels.cuda.token_logprobs",
    },
    "linear_logprobs": {"triton": "crs_fast.kernels.triton.linear_logprobs"},  # the fused LM head: Triton-only
    "topk_scores": {"triton": "crs_fast.kernels.triton.topk_scores", "cuda": "crs_fast.kernels.cuda.topk_scores"},
}
TRITON_OPS = frozenset(op for op, by_backend in LAUNCHERS.items() if "triton" in by_backend)
CUDA_OPS = frozenset(op for op, by_backend in LAUNCHERS.items() if "cuda" in by_backend)

# Automatic choice for CUDA tensors, per op: (backend, the measurement behind it). Until a GPU run
# of bench/gpu_check.sh is committed under bench/results/, the entries are provisional and say so;
# the other GPU backend is the fallback when the chosen one cannot run (e.g. triton not installed).
_UNMEASURED = "provisional: no GPU measurement committed yet (bench/results/ holds CPU runs only)"
GPU_DISPATCH: dict[str, tuple[str, str]] = {
    "gae": ("triton", _UNMEASURED),
    "kl_penalty": ("triton", _UNMEASURED),
    "token_rewards": ("triton", _UNMEASURED),
    "ppo_policy_loss": ("triton", _UNMEASURED),
    "ppo_value_loss": ("triton", _UNMEASURED),
    "token_logprobs": ("triton", _UNMEASURED),
    "linear_logprobs": ("triton", "the only GPU kernel: the fused LM head is Triton-only"),
    "topk_scores": ("triton", _UNMEASURED + "; Triton keeps O(B*k) memory, CUDA a [B, chunk] score block"),
}


def launcher(op: str, backend: str) -> ModuleType:
    """The module launching ``op`` on ``backend`` ("triton" or "cuda"), from :data:`LAUNCHERS`."""
    return importlib.import_module(LAUNCHERS[op][backend])


def unavailable(backend: str, op: str, device_type: str) -> str:
    """Empty if the GPU ``backend`` can run ``op`` ("" for any op) on ``device_type``, else why not."""
    if op and backend not in LAUNCHERS.get(op, {}):
        return f"no Triton kernel for {op} yet" if backend == "triton" else f"no CUDA C++ kernel for {op} (Triton-only)"
    if backend == "triton":
        from .triton import unavailable as why
    else:
        from .cuda import unavailable as why
    return why(device_type)
