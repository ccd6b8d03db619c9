"""torch.library.opcheck for every custom op (schema, fake, autograd registration, AOT dispatch)."""

import importlib

import pytest
import torch
from helpers import make_mask, rand

import crs_fast.ops  # noqa: F401  (registers the ops)

# the package re-exports functions named like some op modules, so import the modules by path
G, K, LL, L, P, TR, TK = (
    importlib.import_module(f"crs_fast.ops.{name}")
    for name in ("gae", "kl_penalty", "linear_logprobs", "token_logprobs", "ppo_loss", "token_rewards", "topk_scores")
)


def _cases():
    g = torch.Generator().manual_seed(0)
    B, T, V, H = 3, 11, 37, 8
    m = make_mask(B, T, gen=g)
    x = lambda *s, grad=False: rand(*s, gen=g).requires_grad_(grad)  # noqa: E731
    y = torch.randint(0, V, (B, T), generator=g)
    lse, ent = rand(B, T, gen=g), rand(B, T, gen=g).abs()
    return {
        "gae": (G._gae_op, (x(B, T), x(B, T), m, 0.99, 0.95, "verl", True, "cpu")),
        "masked_whiten": (G._whiten_op, (x(B, T), m, True, True, "cpu")),
        "reinforce_returns": (G._reinforce_op, (x(B, T), m, 0.9, "cpu")),
        "group_advantages": (G._group_op, (x(B * 3), torch.arange(B * 3) // 3, "grpo", 1e-6, True, "cpu")),
        "kl_penalty": (K._kl_op, (x(B, T, grad=True), x(B, T, grad=True), "k3", None, "cpu")),
        "kl_penalty_backward": (K._kl_bwd_op, (x(B, T), x(B, T), x(B, T), "k1+", 10.0, "cpu")),
        "token_rewards": (TR._rewards_op, (x(B), x(B, T), m, 0.1, -1.0, 1.0, "cpu")),
        "ppo_policy_loss": (
            P._policy_op,
            (x(B, T, grad=True), x(B, T), x(B, T), m, 0.2, 0.3, 3.0, "seq-mean-token-mean", "cpu"),
        ),
        "ppo_policy_loss_backward": (
            P._policy_bwd_op,
            (torch.tensor(1.0), x(B, T), x(B, T), x(B, T), m, 0.2, 0.3, None, "token-mean", "cpu"),
        ),
        "ppo_value_loss": (P._value_op, (x(B, T, grad=True), x(B, T), x(B, T), m, 0.2, "token-mean", "cpu")),
        "ppo_value_loss_backward": (
            P._value_bwd_op,
            (torch.tensor(1.0), x(B, T), x(B, T), x(B, T), m, None, "seq-mean-token-sum", "cpu"),
        ),
        "token_logprobs": (L._lp_op, (x(B, T, V, grad=True), y, 0.9, -100, "cpu")),
        "token_logprobs_backward": (L._lp_bwd_op, (x(B, T), None, x(B, T, V), y, lse, ent, 1.0, -100, "cpu")),
        "linear_logprobs": (LL._llp_op, (x(B * T, H, grad=True), x(V, H, grad=True), y.view(-1), 1.0, -100, 16, "cpu")),
        "linear_logprobs_backward": (
            LL._llp_bwd_op,
            (x(B * T), x(B * T), x(B * T, H), x(V, H), y.view(-1), lse.view(-1), ent.view(-1), 1.0, -100, 16, "cpu"),
        ),
        "topk_scores": (TK._topk_op, (x(4, H), x(50, H), 5, x(50), torch.tensor([[1, -1]] * 4), 16, "cpu")),
    }


CASES = _cases()


@pytest.mark.parametrize("name", sorted(CASES))
def test_opcheck(name):
    op, args = CASES[name]
    torch.library.opcheck(op, args)


def test_every_custom_op_is_checked():
    registered = {op for op in torch.ops.crs_fast}
    assert registered == set(CASES), f"custom ops without an opcheck case: {registered - set(CASES)}"
