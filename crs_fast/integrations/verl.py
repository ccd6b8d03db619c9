"""crs_fast inside verl: ``patch()`` replaces verl's advantage, KL, loss and log-prob functions
with crs_fast ops of the same signature and the same numbers.

Replaced, in ``verl.trainer.ppo.core_algos``: ``compute_gae_advantage_return``, ``kl_penalty``,
``kl_penalty_forward``, ``compute_policy_loss_vanilla`` (also in the policy-loss registry under
"vanilla" and under our name "crs_fast_vanilla"), ``compute_value_loss``, ``agg_loss``,
``compute_grpo_outcome_advantage`` and ``compute_rloo_outcome_advantage`` (and their
advantage-estimator registry entries); in ``verl.utils.torch_functional``:
``logprobs_from_logits``, ``entropy_from_logits``, ``masked_whiten``; and the fused LM-head
contract ``verl.utils.experimental.torch_functional.FusedLinearForPPO.forward`` (per-token
log-probs and entropy from hidden states) through :func:`crs_fast.linear_logprobs`. Modules that
imported these names with ``from ... import`` are updated too.

Arguments crs_fast does not fuse fall back to verl's own code, never dropped: per-token
``rollout_is_weights`` in the policy loss and KL kinds other than k1/abs/k2/k3 (e.g. "full").
Global-batch normalisation (``dp_size``, ``batch_num_tokens``, ``global_batch_size``,
``loss_scale_factor``, "token-sum") is applied exactly as verl's ``agg_loss`` does.
"""

from typing import Any

import torch

from .. import ops
from ..ops import reference
from ._patching import Patcher, entropy, group_ids, public_api

_CORE = "verl.trainer.ppo.core_algos"
_F = "verl.utils.torch_functional"
_KL_NAMES = {"kl": "k1", "k1": "k1", "abs": "abs", "mse": "k2", "k2": "k2", "low_var_kl": "k3", "k3": "k3"}


def _agg_scale(
    mask: torch.Tensor,
    mode: str,
    dp_size: int = 1,
    batch_num_tokens: Any = None,
    global_batch_size: Any = None,
    loss_scale_factor: Any = None,
) -> torch.Tensor | float:
    """Factor from crs_fast's local aggregation (token-mean, or the seq-mean modes over the local
    non-empty rows, "-norm" divided by T) to verl's ``agg_loss`` with these global-batch arguments."""
    m = mask.ne(0)
    if mode in ("token-mean", "token-sum"):
        n_local = m.sum()
        if mode == "token-sum":
            return n_local * dp_size
        if batch_num_tokens is None:
            if dp_size > 1:
                raise ValueError("(global) batch_num_tokens is required when dp_size > 1")
            return 1.0
        return n_local / batch_num_tokens * dp_size
    rows = (m.sum(dim=-1) > 0).sum()
    scale: torch.Tensor | float = 1.0
    if global_batch_size is not None:
        scale = rows / global_batch_size * dp_size
    elif dp_size > 1:
        raise ValueError("global_batch_size is required when dp_size > 1")
    if mode == "seq-mean-token-sum-norm" and loss_scale_factor is not None:
        scale = scale * mask.shape[-1] / loss_scale_factor
    return scale


def _local_mode(mode: str) -> str:
    if mode == "token-sum":
        return "token-mean"
    if mode not in reference.AGG_MODES:
        raise ValueError(f"Invalid loss_agg_mode: {mode}")
    return mode


def compute_gae_advantage_return(
    token_level_rewards: torch.Tensor, values: torch.Tensor, response_mask: torch.Tensor, gamma: Any, lam: Any
) -> tuple[torch.Tensor, torch.Tensor]:
    """verl's GAE (observation tokens skipped, advantages whitened) through :func:`crs_fast.gae`."""
    with torch.no_grad():
        return ops.gae(token_level_rewards, values, response_mask, gamma=float(gamma), lam=float(lam), mode="verl")


def _kl(logprob: torch.Tensor, ref_logprob: torch.Tensor, name: str, straight_through: bool) -> torch.Tensor | None:
    straight = straight_through and name.endswith("+")
    base = name[:-1] if name.endswith("+") else name
    if base not in _KL_NAMES:
        return None
    dt = torch.promote_types(logprob.dtype, ref_logprob.dtype)
    kind = _KL_NAMES[base] + ("+" if straight else "")
    return ops.kl_penalty(logprob.to(dt), ref_logprob.to(dt), kind=kind)


def kl_penalty(logprob: torch.Tensor, ref_logprob: torch.Tensor, kl_penalty: str) -> torch.Tensor:
    """verl's KL estimators (k1/kl, abs, k2/mse, k3/low_var_kl and their "+" straight-through forms)."""
    out = _kl(logprob, ref_logprob, kl_penalty, straight_through=True)
    return _PATCHER.original(f"{_CORE}:kl_penalty")(logprob, ref_logprob, kl_penalty) if out is None else out


def kl_penalty_forward(logprob: torch.Tensor, ref_logprob: torch.Tensor, kl_penalty: str) -> torch.Tensor:
    """verl's KL estimator values (no straight-through)."""
    out = _kl(logprob, ref_logprob, kl_penalty, straight_through=False)
    return _PATCHER.original(f"{_CORE}:kl_penalty_forward")(logprob, ref_logprob, kl_penalty) if out is None else out


def compute_policy_loss_vanilla(
    old_log_prob: torch.Tensor,
    log_prob: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    loss_agg_mode: str = "token-mean",
    config: Any = None,
    rollout_is_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, Any]]:
    """verl's vanilla (dual-clip) PPO policy loss through :func:`crs_fast.ppo_policy_loss`."""
    if rollout_is_weights is not None:  # per-token weights are not fused: verl's own code, exactly
        return _PATCHER.original(f"{_CORE}:compute_policy_loss_vanilla")(
            old_log_prob, log_prob, advantages, response_mask, loss_agg_mode, config, rollout_is_weights
        )
    assert config is not None
    clip = config.clip_ratio
    low = config.clip_ratio_low if config.clip_ratio_low is not None else clip
    high = config.clip_ratio_high if config.clip_ratio_high is not None else clip
    dt = torch.promote_types(log_prob.dtype, old_log_prob.dtype)
    loss, stats = ops.ppo_policy_loss(
        log_prob.to(dt),
        old_log_prob.to(dt),
        advantages.to(dt),
        response_mask,
        clip_low=low,
        clip_high=high,
        dual_clip=config.get("clip_ratio_c", 3.0),
        agg=_local_mode(loss_agg_mode),
    )
    info = dict(getattr(config, "global_batch_info", None) or {})
    loss = (loss * _agg_scale(response_mask, loss_agg_mode, **info)).to(torch.promote_types(dt, advantages.dtype))
    metrics = {
        "actor/pg_clipfrac": stats["clipfrac"].item(),
        "actor/ppo_kl": stats["approx_kl"].item(),
        "actor/pg_clipfrac_lower": stats["clipfrac_lower"].item(),
    }
    return loss, metrics


def compute_value_loss(
    vpreds: torch.Tensor,
    returns: torch.Tensor,
    values: torch.Tensor,
    response_mask: torch.Tensor,
    cliprange_value: float,
    loss_agg_mode: str = "token-mean",
    dp_size: int = 1,
    batch_num_tokens: Any = None,
    global_batch_size: Any = None,
    loss_scale_factor: Any = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """verl's clipped value loss through :func:`crs_fast.ppo_value_loss`."""
    loss, stats = ops.ppo_value_loss(
        vpreds,
        values.to(vpreds.dtype),
        returns.to(vpreds.dtype),
        response_mask,
        clip=cliprange_value,
        agg=_local_mode(loss_agg_mode),
    )
    scale = _agg_scale(response_mask, loss_agg_mode, dp_size, batch_num_tokens, global_batch_size, loss_scale_factor)
    return (loss * scale).to(vpreds.dtype), stats["clipfrac"].to(vpreds.dtype)


def agg_loss(
    loss_mat: torch.Tensor,
    loss_mask: torch.Tensor,
    loss_agg_mode: str,
    dp_size: int = 1,
    batch_num_tokens: Any = None,
    global_batch_size: Any = None,
    loss_scale_factor: Any = None,
) -> torch.Tensor:
    """verl's ``agg_loss``: crs_fast's aggregation (empty masks give 0) with verl's global-batch factors."""
    local = reference.aggregate(loss_mat, loss_mask.ne(0).to(loss_mat.dtype), _local_mode(loss_agg_mode))
    return local * _agg_scale(loss_mask, loss_agg_mode, dp_size, batch_num_tokens, global_batch_size, loss_scale_factor)


def _outcome(
    mode: str, token_level_rewards: torch.Tensor, response_mask: torch.Tensor, index: Any, epsilon: float, norm: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        scores = token_level_rewards.sum(dim=-1)
        ids = torch.tensor(group_ids(index), device=scores.device)
        adv = ops.group_advantages(scores, ids, mode=mode, eps=epsilon, norm_by_std=norm)
        adv = adv.unsqueeze(-1) * response_mask
    return adv, adv


def compute_grpo_outcome_advantage(
    token_level_rewards: torch.Tensor,
    response_mask: torch.Tensor,
    index: Any,
    epsilon: float = 1e-6,
    norm_adv_by_std_in_grpo: bool = True,
    config: Any = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """verl's GRPO outcome advantage through :func:`crs_fast.group_advantages`."""
    return _outcome("grpo", token_level_rewards, response_mask, index, epsilon, norm_adv_by_std_in_grpo)


def compute_rloo_outcome_advantage(
    token_level_rewards: torch.Tensor,
    response_mask: torch.Tensor,
    index: Any,
    epsilon: float = 1e-6,
    config: Any = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """verl's RLOO outcome advantage through :func:`crs_fast.group_advantages`."""
    return _outcome("rloo", token_level_rewards, response_mask, index, epsilon, True)


def logprobs_from_logits(logits: torch.Tensor, labels: torch.Tensor, inplace_backward: bool = True) -> torch.Tensor:
    """Label log-probs in the logits' dtype, through :func:`crs_fast.token_logprobs`."""
    return ops.token_logprobs(logits, labels).to(logits.dtype)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of softmax(logits) in the logits' dtype, through :func:`crs_fast.token_logprobs`."""
    return entropy(logits)


def masked_whiten(values: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """verl's ``masked_whiten`` through :func:`crs_fast.masked_whiten`."""
    return ops.masked_whiten(values, mask, shift_mean=shift_mean)


def fused_linear_for_ppo_forward(
    self: Any,
    hidden_states: torch.Tensor,
    vocab_weights: torch.Tensor,
    input_ids: torch.Tensor,
    temperature: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``FusedLinearForPPO.forward``: (float32 log-probs, entropy in the hidden dtype) from hidden states,
    through :func:`crs_fast.linear_logprobs` (vocabulary blocks; verl's token ``chunk_size`` is not used)."""
    lp, ent = ops.linear_logprobs(
        hidden_states, vocab_weights, input_ids.to(torch.int64), temperature=temperature, entropy=True
    )
    return lp, ent.to(hidden_states.dtype)


def _registries() -> list[tuple[dict, str, Any]]:
    import verl.trainer.ppo.core_algos as core

    return [
        (core.POLICY_LOSS_REGISTRY, "vanilla", compute_policy_loss_vanilla),
        (core.POLICY_LOSS_REGISTRY, "crs_fast_vanilla", compute_policy_loss_vanilla),
        (core.ADV_ESTIMATOR_REGISTRY, "gae", compute_gae_advantage_return),
        (core.ADV_ESTIMATOR_REGISTRY, "grpo", compute_grpo_outcome_advantage),
        (core.ADV_ESTIMATOR_REGISTRY, "rloo", compute_rloo_outcome_advantage),
    ]


_PATCHER = Patcher(
    dist="verl",
    min_version="0.9.0",
    below_version="0.10.0",
    targets={
        f"{_CORE}:compute_gae_advantage_return": compute_gae_advantage_return,
        f"{_CORE}:kl_penalty": kl_penalty,
        f"{_CORE}:kl_penalty_forward": kl_penalty_forward,
        f"{_CORE}:compute_policy_loss_vanilla": compute_policy_loss_vanilla,
        f"{_CORE}:compute_value_loss": compute_value_loss,
        f"{_CORE}:agg_loss": agg_loss,
        f"{_CORE}:compute_grpo_outcome_advantage": compute_grpo_outcome_advantage,
        f"{_CORE}:compute_rloo_outcome_advantage": compute_rloo_outcome_advantage,
        f"{_F}:logprobs_from_logits": logprobs_from_logits,
        f"{_F}:entropy_from_logits": entropy_from_logits,
        f"{_F}:masked_whiten": masked_whiten,
        "verl.utils.experimental.torch_functional:FusedLinearForPPO.forward": fused_linear_for_ppo_forward,
    },
    registries=_registries,
)


patch, unpatch, patched = public_api(_PATCHER, "verl")
