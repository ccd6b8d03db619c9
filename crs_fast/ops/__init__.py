"""Public ops: validation, torch.library custom ops with fakes and autograd, backend dispatch.
One module per op family, named after it; the KL controllers in ``kl_controllers``."""

from ._dispatch import BACKENDS, BackendUnavailableError
from .gae import gae, group_advantages, masked_whiten, reinforce_returns
from .kl_controllers import AdaptiveKLController, FixedKLController
from .kl_penalty import kl_penalty
from .linear_logprobs import linear_logprobs
from .ppo_loss import ppo_policy_loss, ppo_value_loss
from .token_logprobs import token_logprobs
from .token_rewards import token_rewards
from .topk_scores import topk_scores

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
]
