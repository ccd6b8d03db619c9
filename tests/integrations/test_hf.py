"""crs_fast.integrations.hf: per-token log-probs of HF causal LMs through the fused LM head."""

import pytest
import torch
import transformers  # noqa: E402

from crs_fast.integrations import hf

CONFIGS = {
    "llama": lambda: transformers.LlamaConfig(
        vocab_size=300,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
    ),
    "qwen2": lambda: transformers.Qwen2Config(
        vocab_size=300,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
    ),
    "mistral": lambda: transformers.MistralConfig(
        vocab_size=300,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
    ),
    "gpt2": lambda: transformers.GPT2Config(vocab_size=300, n_embd=32, n_layer=2, n_head=4, n_positions=64),
}


def _model(kind):
    torch.manual_seed(0)
    return transformers.AutoModelForCausalLM.from_config(CONFIGS[kind]()).float().eval()


def _reference(model, ids, mask):
    logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
    logp = logits.log_softmax(-1)
    lp = logp.gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)
    ent = -(logp.exp() * logp).sum(-1)
    keep = mask[:, 1:].bool()
    return lp * keep, ent * keep


@pytest.mark.parametrize("kind", sorted(CONFIGS))
def test_compute_logprobs_matches_logits(kind, gen):
    model = _model(kind)
    ids = torch.randint(0, 300, (3, 12), generator=gen)
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0  # right padding
    out = hf.compute_logprobs(model, ids, mask)
    lp, ent = _reference(model, ids, mask)
    torch.testing.assert_close(out.logprobs, lp, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out.entropy, ent, rtol=1e-4, atol=1e-5)
    params = [p for p in model.parameters() if p.requires_grad]
    g_new = torch.autograd.grad((out.logprobs.sum() + out.entropy.sum()), params, allow_unused=True)
    lp2, ent2 = _reference(model, ids, mask)
    g_ref = torch.autograd.grad(lp2.sum() + ent2.sum(), params, allow_unused=True)
    for a, b in zip(g_new, g_ref, strict=True):
        if a is not None or b is not None:
            torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-5)


def test_patch_causal_lm(gen):
    model = _model("llama")
    own = model.forward
    ids = torch.randint(0, 300, (2, 8), generator=gen)
    hf.patch_causal_lm(model)
    hf.patch_causal_lm(model)  # twice is harmless
    out = model(input_ids=ids, return_token_logprobs=True)
    assert isinstance(out, hf.TokenLogprobsOutput) and out.logprobs.shape == (2, 7)
    assert model(input_ids=ids).logits.shape == (2, 8, 300)  # other calls are the model's own
    hf.unpatch_causal_lm(model)
    assert model.forward == own


def test_unsupported_model_refused():
    model = _model("llama")
    model.config.model_type = "gemma2"
    with pytest.raises(ValueError, match="gemma2"):
        hf.patch_causal_lm(model)
