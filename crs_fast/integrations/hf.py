"""Per-token log-probs and entropy from Hugging Face causal LMs through the fused LM head,
without materialising the [B, T, V] logits.

``compute_logprobs(model, input_ids, attention_mask, labels)`` runs the model's backbone and
:func:`crs_fast.linear_logprobs` over its output embedding matrix. ``patch_causal_lm(model)``
gives a model a forward that does the same when called with ``return_token_logprobs=True``
(every other call is the model's own forward). Supported: Llama, Qwen2/Qwen3, Mistral and
GPT-2 style models (a linear LM head without bias, soft-capping or logit scaling).
"""

from dataclasses import dataclass
from typing import Any

import torch

from .. import ops

SUPPORTED_MODEL_TYPES = ("llama", "qwen2", "qwen3", "mistral", "gpt2")


@dataclass
class TokenLogprobsOutput:
    """``logprobs`` and ``entropy`` [B, T-1] (float32): position t scores label t + 1."""

    logprobs: torch.Tensor
    entropy: torch.Tensor


def _backbone_and_head(model: Any) -> tuple[Any, torch.Tensor]:
    model_type = getattr(model.config, "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(
            f"crs_fast's fused LM head supports model types {SUPPORTED_MODEL_TYPES}; this model is {model_type!r}"
        )
    head = model.get_output_embeddings()
    if head is None or getattr(head, "bias", None) is not None:
        raise ValueError("the model needs a linear output embedding without bias for the fused LM head")
    return getattr(model, model.base_model_prefix), head.weight


def compute_logprobs(
    model: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
    *,
    temperature: float = 1.0,
    ignore_index: int = -100,
) -> TokenLogprobsOutput:
    """``log p(labels[:, t+1] | tokens <= t)`` and the entropy at each position t < T-1, with
    Hugging Face's shift convention (``labels`` default to ``input_ids``; positions whose label is
    ``ignore_index`` or whose next token is padding give 0), never building [B, T, V] logits."""
    backbone, weight = _backbone_and_head(model)
    hidden = backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state[:, :-1]
    y = (input_ids if labels is None else labels)[:, 1:]
    if attention_mask is not None:
        y = y.masked_fill(attention_mask[:, 1:] == 0, ignore_index)
    lp, ent = ops.linear_logprobs(
        hidden, weight.to(hidden.dtype), y, temperature=temperature, entropy=True, ignore_index=ignore_index
    )
    return TokenLogprobsOutput(lp, ent)


def patch_causal_lm(model: Any) -> Any:
    """Give ``model`` a forward that, called with ``return_token_logprobs=True`` (and optional
    ``labels``, ``temperature``), returns :class:`TokenLogprobsOutput` through the fused LM head.
    Patching twice is harmless; :func:`unpatch_causal_lm` restores the model's own forward."""
    _backbone_and_head(model)  # refuse unsupported models now, not at the first call
    if "_crs_fast_forward" in model.__dict__:
        return model
    original = model.forward

    def forward(*args: Any, return_token_logprobs: bool = False, temperature: float = 1.0, **kwargs: Any):
        if not return_token_logprobs:
            return original(*args, **kwargs)
        input_ids = kwargs.pop("input_ids", args[0] if args else None)
        return compute_logprobs(
            model, input_ids, kwargs.get("attention_mask"), kwargs.get("labels"), temperature=temperature
        )

    model.__dict__["_crs_fast_forward"] = original
    model.forward = forward
    return model


def unpatch_causal_lm(model: Any) -> Any:
    """Restore the model's own forward."""
    if "_crs_fast_forward" in model.__dict__:
        del model.__dict__["forward"]
        del model.__dict__["_crs_fast_forward"]
    return model
