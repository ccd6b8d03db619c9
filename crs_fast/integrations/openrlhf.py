"""crs_fast inside OpenRLHF: ``patch()`` replaces ``openrlhf.models.utils.compute_approx_kl``,
``log_probs_from_logits`` and ``compute_entropy``, ``PolicyLoss.forward`` and ``ValueLoss.forward``
(``openrlhf.models.loss``), and the experience maker's ``get_advantages_and_returns`` and
``get_cumulative_returns`` with crs_fast ops of the same signature and numbers.

Options crs_fast does not fuse run OpenRLHF's own code, never dropped: the importance-weighted
unbiased KL gradient (``log_probs_old`` given), GSPO and the train/rollout IS correction in
``PolicyLoss``. ``log_probs_from_logits`` keeps OpenRLHF's in-place division of the logits by
the temperature, which later calls on the same logits rely on.
"""

from typing import Any

import torch

from .. import ops
from ._patching import Patcher, entropy, public_api

_UTILS = "openrlhf.models.utils"
_LOSS = "openrlhf.models.loss"
_EXP = "openrlhf.trainer.ppo_utils.experience_maker:RemoteExperienceMaker"


def compute_approx_kl(
    log_probs: torch.Tensor,
    log_probs_base: torch.Tensor,
    log_probs_old: torch.Tensor | None = None,
    kl_estimator: str = "k1",
    unbiased_gradient: bool = False,
) -> torch.Tensor:
    """OpenRLHF's KL estimators (clamped to +-10, float32) through :func:`crs_fast.kl_penalty`."""
    if kl_estimator not in ("k1", "k2", "k3") or (unbiased_gradient and log_probs_old is not None):
        return _PATCHER.original(f"{_UTILS}:compute_approx_kl")(
            log_probs, log_probs_base, log_probs_old, kl_estimator, unbiased_gradient
        )
    kind = kl_estimator + ("+" if unbiased_gradient else "")
    return ops.kl_penalty(log_probs.float(), log_probs_base.float(), kind=kind, clamp=10.0)


def log_probs_from_logits(logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Label log-probs in the logits' dtype (the logits divided by the temperature in place, as OpenRLHF)."""
    if temperature != 1.0:
        logits.div_(temperature)
    return ops.token_logprobs(logits, labels).to(logits.dtype)


def compute_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of softmax(logits) in the logits' dtype."""
    return entropy(logits)


def _scale(
    mask: torch.Tensor, token_level: bool, dp_size: int, batch_num_tokens: Any, global_batch_size: Any
) -> torch.Tensor | float:
    """Factor from the local token-mean / seq-mean-token-mean to OpenRLHF's global-batch aggregation."""
    m = mask.ne(0)
    if token_level:
        return 1.0 if batch_num_tokens is None else m.sum() / batch_num_tokens * dp_size
    return 1.0 if global_batch_size is None else (m.sum(-1) > 0).sum() / global_batch_size * dp_size


def policy_loss_forward(
    self: Any,
    log_probs: torch.Tensor,
    old_log_probs: torch.Tensor,
    advantages: torch.Tensor,
    action_mask: torch.Tensor | None = None,
    rollout_log_probs: torch.Tensor | None = None,
    dp_size: int = 1,
    batch_num_tokens: Any = None,
    global_batch_size: Any = None,
) -> tuple:
    """``PolicyLoss.forward`` for plain (dual-clip) PPO through :func:`crs_fast.ppo_policy_loss`."""
    if self.policy_loss_type != "ppo" or self.is_correction_level != "off":
        return _PATCHER.original(f"{_LOSS}:PolicyLoss.forward")(
            self,
            log_probs,
            old_log_probs,
            advantages,
            action_mask,
            rollout_log_probs,
            dp_size,
            batch_num_tokens,
            global_batch_size,
        )
    mask = torch.ones_like(log_probs, dtype=torch.bool) if action_mask is None else action_mask
    agg = "token-mean" if self.token_level_loss else "seq-mean-token-mean"
    loss, stats = ops.ppo_policy_loss(
        log_probs,
        old_log_probs.to(log_probs.dtype),
        advantages.to(log_probs.dtype),
        mask,
        clip_low=self.clip_eps_low,
        clip_high=self.clip_eps_high,
        dual_clip=self.dual_clip,
        agg=agg,
    )
    loss = loss * _scale(mask, self.token_level_loss, dp_size, batch_num_tokens, global_batch_size)
    return loss.to(log_probs.dtype), stats["clipfrac"], stats["approx_kl"], None, None


def value_loss_forward(
    self: Any,
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    action_mask: torch.Tensor | None = None,
    dp_size: int = 1,
    batch_num_tokens: Any = None,
    global_batch_size: Any = None,
) -> torch.Tensor:
    """``ValueLoss.forward`` through :func:`crs_fast.ppo_value_loss`."""
    mask = torch.ones_like(values, dtype=torch.bool) if action_mask is None else action_mask
    agg = "token-mean" if self.token_level_loss else "seq-mean-token-mean"
    loss, _ = ops.ppo_value_loss(
        values, old_values.to(values.dtype), returns.to(values.dtype), mask, clip=self.clip_eps, agg=agg
    )
    return (loss * _scale(mask, self.token_level_loss, dp_size, batch_num_tokens, global_batch_size)).to(values.dtype)


def get_advantages_and_returns(
    self: Any, values: torch.Tensor, rewards: torch.Tensor, action_mask: torch.Tensor, gamma: float, lambd: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """OpenRLHF's GAE (values and rewards masked first; unnormalised) through :func:`crs_fast.gae`."""
    mask = torch.ones_like(values, dtype=torch.bool) if action_mask is None else action_mask
    with torch.no_grad():
        return ops.gae(
            rewards.to(values.dtype), values, mask, gamma=float(gamma), lam=float(lambd), mode="openrlhf", whiten=False
        )


def get_cumulative_returns(self: Any, rewards: torch.Tensor, action_mask: torch.Tensor, gamma: float) -> torch.Tensor:
    """OpenRLHF's REINFORCE returns through :func:`crs_fast.reinforce_returns`."""
    mask = torch.ones_like(rewards, dtype=torch.bool) if action_mask is None else action_mask
    with torch.no_grad():
        return ops.reinforce_returns(rewards, mask, gamma=float(gamma))


_PATCHER = Patcher(
    dist="openrlhf",
    min_version="0.11.0",
    below_version="0.12.0",
    targets={
        f"{_UTILS}:compute_approx_kl": compute_approx_kl,
        f"{_UTILS}:log_probs_from_logits": log_probs_from_logits,
        f"{_UTILS}:compute_entropy": compute_entropy,
        f"{_LOSS}:PolicyLoss.forward": policy_loss_forward,
        f"{_LOSS}:ValueLoss.forward": value_loss_forward,
        f"{_EXP}.get_advantages_and_returns": get_advantages_and_returns,
        f"{_EXP}.get_cumulative_returns": get_cumulative_returns,
    },
)


patch, unpatch, patched = public_api(_PATCHER, "OpenRLHF")
