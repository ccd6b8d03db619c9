"""Convergence of the verl patch: a tiny Llama (random init, about 0.9M parameters) trained for
30 PPO steps through verl's core_algos, once patched and once not, on the same toy task."""

import types

import torch
from frameworks import require

import crs_fast.integrations.verl as cv

transformers = require("transformers")
core = require("verl.trainer.ppo.core_algos")
verl_F = require("verl.utils.torch_functional")

VOCAB, PROMPT, RESPONSE, BATCH, STEPS, TARGET = 256, 4, 12, 16, 30, 7


class _Cfg(types.SimpleNamespace):
    def get(self, key, default=None):
        return getattr(self, key, default)


def _models():
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=128,
        intermediate_size=384,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    policy = transformers.LlamaForCausalLM(cfg)
    ref = transformers.LlamaForCausalLM(cfg)
    ref.load_state_dict(policy.state_dict())
    value_head = torch.nn.Linear(128, 1)
    return policy, ref.eval(), value_head


def _rollouts(ref, step):
    """Responses sampled from the frozen reference (identical in both runs); reward: TARGET tokens."""
    g = torch.Generator().manual_seed(1000 + step)
    seq = torch.randint(0, VOCAB, (BATCH, PROMPT), generator=g)
    with torch.no_grad():
        for _ in range(RESPONSE):
            probs = ref(input_ids=seq).logits[:, -1].float().softmax(-1)
            seq = torch.cat([seq, torch.multinomial(probs, 1, generator=g)], dim=1)
    resp = seq[:, PROMPT:]
    lengths = torch.randint(RESPONSE // 2, RESPONSE + 1, (BATCH,), generator=g)
    mask = (torch.arange(RESPONSE)[None] < lengths[:, None]).float()
    mask[:, 3:5] = 0  # a masked observation span inside the response (multi-turn)
    mask[:, 0] = 1
    score = ((resp == TARGET) | (resp == TARGET + 1)).float().mul(mask).sum(-1)
    return seq, mask, score


def _logprobs_values(model, value_head, seq):
    out = model(input_ids=seq, output_hidden_states=True)
    logits = out.logits[:, PROMPT - 1 : -1]
    lp = verl_F.logprobs_from_logits(logits, seq[:, PROMPT:])
    values = value_head(out.hidden_states[-1][:, PROMPT - 1 : -1]).squeeze(-1)
    return lp, values, logits


def _train():
    policy, ref, value_head = _models()
    opt = torch.optim.SGD(list(policy.parameters()) + list(value_head.parameters()), lr=0.05)
    cfg = _Cfg(clip_ratio=0.2, clip_ratio_low=0.2, clip_ratio_high=0.28, clip_ratio_c=3.0, global_batch_info={})
    losses = []
    for step in range(STEPS):
        seq, mask, score = _rollouts(ref, step)
        with torch.no_grad():
            old_lp, old_values, _ = _logprobs_values(policy, value_head, seq)
            ref_lp = verl_F.logprobs_from_logits(ref(input_ids=seq).logits[:, PROMPT - 1 : -1], seq[:, PROMPT:])
            kl = core.kl_penalty(old_lp, ref_lp, "low_var_kl")
            rewards = -0.05 * kl * mask
            last = (mask * torch.arange(RESPONSE)).argmax(-1)
            rewards[torch.arange(BATCH), last] += score
            adv, ret = core.compute_gae_advantage_return(rewards, old_values, mask, 1.0, 0.95)
        for _ in range(2):  # PPO epochs
            lp, values, logits = _logprobs_values(policy, value_head, seq)
            pg, _ = core.compute_policy_loss_vanilla(old_lp, lp, adv, mask, "seq-mean-token-mean", cfg)
            vf, _ = core.compute_value_loss(values, ret, old_values, mask, 0.2, "token-mean")
            ent = core.agg_loss(verl_F.entropy_from_logits(logits), mask, "token-mean")
            kl_loss = core.agg_loss(core.kl_penalty(lp, ref_lp, "k3+"), mask, "token-mean")
            loss = pg + 0.5 * vf - 0.01 * ent + 0.01 * kl_loss
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(list(policy.parameters()) + list(value_head.parameters()), 1.0)
            opt.step()
            losses.append([pg.item(), vf.item(), ent.item(), loss.item()])
    params = torch.cat([p.detach().flatten() for p in list(policy.parameters()) + list(value_head.parameters())])
    return torch.tensor(losses, dtype=torch.float64), params


def test_patched_training_matches_unpatched():
    policy, _, _ = _models()
    assert 0.5e6 < sum(p.numel() for p in policy.parameters()) < 1.5e6
    base_losses, base_params = _train()
    with cv.patched():
        losses, params = _train()
    rel = ((losses - base_losses).abs() / base_losses.abs().clamp(min=1e-3)).max().item()
    assert rel <= 1e-4, f"per-step losses differ by {rel:.2e} relative"
    diff = ((params - base_params).abs().max() / base_params.abs().max()).item()
    assert diff <= 1e-4, f"final parameters differ by {diff:.2e} relative"
    assert losses[-1, 3] != losses[0, 3]  # it trained
