"""Bad input: each error is a ValueError or TypeError whose message names the argument."""

import pytest
import torch

import crs_fast as cf

x = torch.zeros(2, 3)
m = torch.ones(2, 3, dtype=torch.bool)
meta = torch.zeros(2, 3, device="meta")
logits = torch.zeros(2, 5)
labels = torch.zeros(2, dtype=torch.long)

CASES = [  # (id, call, exception, argument named in the message)
    ("gae shape", lambda: cf.gae(x, torch.zeros(2, 4), m), ValueError, "values"),
    ("gae device", lambda: cf.gae(x, meta, m), ValueError, "values"),
    ("gae dtype", lambda: cf.gae(x, x.double(), m), TypeError, "values"),
    ("gae int rewards", lambda: cf.gae(x.long(), x, m), TypeError, "rewards"),
    ("gae gamma", lambda: cf.gae(x, x, m, gamma=1.5), ValueError, "gamma"),
    ("gae lam", lambda: cf.gae(x, x, m, lam=-0.1), ValueError, "lam"),
    ("gae mode", lambda: cf.gae(x, x, m, mode="ppo"), ValueError, "mode"),
    ("gae empty", lambda: cf.gae(torch.zeros(0, 3), torch.zeros(0, 3), torch.zeros(0, 3)), ValueError, "rewards"),
    ("gae rank", lambda: cf.gae(torch.zeros(3), torch.zeros(3), torch.zeros(3)), ValueError, "rewards"),
    ("gae not tensor", lambda: cf.gae([[1.0]], x, m), TypeError, "rewards"),
    ("whiten shape", lambda: cf.masked_whiten(x, torch.ones(3, 2)), ValueError, "mask"),
    ("reinforce gamma", lambda: cf.reinforce_returns(x, m, gamma=2.0), ValueError, "gamma"),
    (
        "group shape",
        lambda: cf.group_advantages(torch.zeros(3), torch.zeros(4, dtype=torch.long)),
        ValueError,
        "group_ids",
    ),
    ("group ids float", lambda: cf.group_advantages(torch.zeros(3), torch.zeros(3)), TypeError, "group_ids"),
    (
        "group mode",
        lambda: cf.group_advantages(torch.zeros(3), torch.zeros(3, dtype=torch.long), mode="x"),
        ValueError,
        "mode",
    ),
    ("kl kind", lambda: cf.kl_penalty(x, x, kind="k4"), ValueError, "kind"),
    ("kl shape", lambda: cf.kl_penalty(x, torch.zeros(3, 2)), ValueError, "ref_logp"),
    ("kl device", lambda: cf.kl_penalty(x, meta), ValueError, "ref_logp"),
    ("kl dtype", lambda: cf.kl_penalty(x, x.half()), TypeError, "ref_logp"),
    ("kl clamp", lambda: cf.kl_penalty(x, x, clamp=-1.0), ValueError, "clamp"),
    ("kl empty", lambda: cf.kl_penalty(torch.zeros(0), torch.zeros(0)), ValueError, "logp"),
    ("rewards rows", lambda: cf.token_rewards(torch.zeros(3), x, m, beta=0.1), ValueError, "scores"),
    ("rewards beta", lambda: cf.token_rewards(torch.zeros(2), x, m, beta=-1.0), ValueError, "beta"),
    ("rewards clip", lambda: cf.token_rewards(torch.zeros(2), x, m, beta=0.1, clip=(1.0, 0.0)), ValueError, "clip"),
    ("policy shape", lambda: cf.ppo_policy_loss(x, x, torch.zeros(2, 4), m), ValueError, "advantages"),
    ("policy device", lambda: cf.ppo_policy_loss(x, meta, x, m), ValueError, "old_logp"),
    ("policy dtype", lambda: cf.ppo_policy_loss(x, x.bfloat16(), x, m), TypeError, "old_logp"),
    ("policy agg", lambda: cf.ppo_policy_loss(x, x, x, m, agg="mean"), ValueError, "agg"),
    ("policy dual", lambda: cf.ppo_policy_loss(x, x, x, m, dual_clip=0.5), ValueError, "dual_clip"),
    ("policy clip", lambda: cf.ppo_policy_loss(x, x, x, m, clip_low=-0.1), ValueError, "clip_low"),
    ("policy empty", lambda: cf.ppo_policy_loss(*(torch.zeros(2, 0),) * 4), ValueError, "logp"),
    ("value mask", lambda: cf.ppo_value_loss(x, x, x, torch.ones(2, 2)), ValueError, "mask"),
    ("value clip", lambda: cf.ppo_value_loss(x, x, x, m, clip=-1.0), ValueError, "clip"),
    (
        "logprobs labels shape",
        lambda: cf.token_logprobs(logits, torch.zeros(3, dtype=torch.long)),
        ValueError,
        "labels",
    ),
    ("logprobs labels dtype", lambda: cf.token_logprobs(logits, torch.zeros(2)), TypeError, "labels"),
    ("logprobs labels range", lambda: cf.token_logprobs(logits, torch.tensor([0, 5])), ValueError, "labels"),
    ("logprobs temperature", lambda: cf.token_logprobs(logits, labels, temperature=0.0), ValueError, "temperature"),
    ("logprobs device", lambda: cf.token_logprobs(logits, labels.to("meta")), ValueError, "labels"),
    ("logprobs empty", lambda: cf.token_logprobs(torch.zeros(2, 0), labels), ValueError, "logits"),
    ("linear weight", lambda: cf.linear_logprobs(torch.zeros(2, 4), torch.zeros(5, 3), labels), ValueError, "weight"),
    (
        "linear dtype",
        lambda: cf.linear_logprobs(torch.zeros(2, 4), torch.zeros(5, 4).half(), labels),
        TypeError,
        "weight",
    ),
    (
        "linear labels range",
        lambda: cf.linear_logprobs(torch.zeros(2, 4), torch.zeros(5, 4), torch.tensor([0, 9])),
        ValueError,
        "labels",
    ),
    (
        "linear chunk",
        lambda: cf.linear_logprobs(torch.zeros(2, 4), torch.zeros(5, 4), labels, chunk_size=0),
        ValueError,
        "chunk_size",
    ),
    ("topk k > N", lambda: cf.topk_scores(torch.zeros(2, 3), torch.zeros(4, 3), k=5), ValueError, "k"),
    ("topk k zero", lambda: cf.topk_scores(torch.zeros(2, 3), torch.zeros(4, 3), k=0), ValueError, "k"),
    ("topk dim", lambda: cf.topk_scores(torch.zeros(2, 3), torch.zeros(4, 2), k=1), ValueError, "items"),
    (
        "topk bias",
        lambda: cf.topk_scores(torch.zeros(2, 3), torch.zeros(4, 3), k=1, bias=torch.zeros(3)),
        ValueError,
        "bias",
    ),
    (
        "topk exclude rows",
        lambda: cf.topk_scores(torch.zeros(2, 3), torch.zeros(4, 3), k=1, exclude=torch.zeros(3, 1, dtype=torch.long)),
        ValueError,
        "exclude",
    ),
    ("topk empty", lambda: cf.topk_scores(torch.zeros(0, 3), torch.zeros(4, 3), k=1), ValueError, "queries"),
]


@pytest.mark.parametrize("call,exc,arg", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input(call, exc, arg):
    with pytest.raises(exc, match=f"`{arg}"):
        call()
