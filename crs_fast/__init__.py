"""crs_fast: fused RLHF kernels (C++ CPU now; Triton and CUDA next) and an implicit-feedback
RLHF toolkit for LLM conversational recommenders."""

from .ops import (
    BACKENDS,
    AdaptiveKLController,
    BackendUnavailableError,
    FixedKLController,
    gae,
    group_advantages,
    kl_penalty,
    linear_logprobs,
    masked_whiten,
    ppo_policy_loss,
    ppo_value_loss,
    reinforce_returns,
    token_logprobs,
    token_rewards,
    topk_scores,
)

__version__ = "0.1.0"

__all__ = [
    "BACKENDS",
    "AdaptiveKLController",
    "BackendUnavailableError",
    "FixedKLController",
    "gae",
    "group_advantages",
    "kl_penalty",
    "linear_logprobs",
    "masked_whiten",
    "ppo_policy_loss",
    "ppo_value_loss",
    "reinforce_returns",
    "token_logprobs",
    "token_rewards",
    "topk_scores",
    "__version__",
]
