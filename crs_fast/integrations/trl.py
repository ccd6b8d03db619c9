"""crs_fast inside TRL: ``patch()`` replaces ``trl.trainer.utils.selective_log_softmax``,
``entropy_from_logits`` and ``selective_log_softmax_and_entropy`` (and the trainers' imported
copies) with crs_fast ops of the same signature and numbers.

TRL 1.x no longer ships its PPO trainer, so there is no advantage function to patch;
:func:`compute_advantages` offers GAE with the semantics of TRL's former ``PPOTrainer``.
Index tensors of shape [..., K] (several log-probs per row) run TRL's own code.
"""

import torch

from .. import ops
from ._patching import Patcher, entropy, public_api

_UTILS = "trl.trainer.utils"


def selective_log_softmax(
    logits: torch.Tensor, index: torch.Tensor, temperature: float = 1.0, row_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """``log_softmax(logits / temperature).gather(index)`` through :func:`crs_fast.token_logprobs`."""
    if temperature <= 0:
        raise ValueError("temperature must be positive")
    if index.ndim == logits.ndim:  # K log-probs per row
        return _PATCHER.original(f"{_UTILS}:selective_log_softmax")(logits, index, temperature, row_mask)
    out = ops.token_logprobs(logits, index, temperature=temperature).to(logits.dtype)
    return out if row_mask is None else out.masked_fill(row_mask == 0, 0.0)


def entropy_from_logits(logits: torch.Tensor, chunk_size: int = 128) -> torch.Tensor:
    """Entropy of softmax(logits) per row, in the logits' dtype (``chunk_size`` is not needed)."""
    return entropy(logits)


def selective_log_softmax_and_entropy(
    logits: torch.Tensor,
    index: torch.Tensor,
    entropy_requires_grad: bool = True,
    temperature: float = 1.0,
    row_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Both in one pass over the logits."""
    if temperature <= 0:
        raise ValueError("temperature must be positive")
    lp, ent = ops.token_logprobs(logits, index, temperature=temperature, entropy=True)
    lp, ent = lp.to(logits.dtype), ent.to(logits.dtype)
    if not entropy_requires_grad:
        ent = ent.detach()
    if row_mask is not None:
        lp, ent = lp.masked_fill(row_mask == 0, 0.0), ent.masked_fill(row_mask == 0, 0.0)
    return lp, ent


def compute_advantages(
    values: torch.Tensor, rewards: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0, lam: float = 0.95
) -> tuple[torch.Tensor, torch.Tensor]:
    """GAE as TRL's former ``PPOTrainer``: values past each row's end zeroed, no masking inside
    the recursion, advantages whitened over ``mask`` then zeroed on padding -> (advantages, returns)."""
    with torch.no_grad():
        return ops.gae(rewards.to(values.dtype), values, mask, gamma=gamma, lam=lam, mode="trl", whiten=True)


_PATCHER = Patcher(
    dist="trl",
    min_version="1.16.0",
    below_version="1.17.0",
    targets={
        f"{_UTILS}:selective_log_softmax": selective_log_softmax,
        f"{_UTILS}:entropy_from_logits": entropy_from_logits,
        f"{_UTILS}:selective_log_softmax_and_entropy": selective_log_softmax_and_entropy,
    },
)


patch, unpatch, patched = public_api(_PATCHER, "TRL")
