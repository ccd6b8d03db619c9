"""Every op inside one torch.compile(fullgraph=True) function, forward and backward."""

import torch
from helpers import make_mask, rand

import crs_fast as cf


def ppo_step(hidden, head, labels, old_lp, ref_lp, values, old_values, scores, mask, logits, queries, items):
    lp, ent = cf.linear_logprobs(hidden, head, labels, entropy=True)
    lp = lp.view(mask.shape)
    kl = cf.kl_penalty(lp, ref_lp, kind="k3")
    rewards = cf.token_rewards(scores, kl.detach(), mask, beta=0.05, clip=5.0)
    adv, ret = cf.gae(rewards, values.detach(), mask, gamma=1.0, lam=0.95)
    white = cf.masked_whiten(rewards, mask)
    g = cf.reinforce_returns(rewards, mask, gamma=0.9)
    grp = cf.group_advantages(scores, torch.arange(scores.shape[0], device=scores.device) // 2)
    pl, pstats = cf.ppo_policy_loss(lp, old_lp, adv, mask, dual_clip=3.0, agg="seq-mean-token-mean")
    vl, vstats = cf.ppo_value_loss(values, old_values, ret, mask, clip=0.2)
    tlp, tent = cf.token_logprobs(logits, labels.view(mask.shape), entropy=True)
    vals, idx = cf.topk_scores(queries, items, k=5)
    loss = pl + 0.5 * vl + 0.01 * kl.mean() - 0.01 * ent.mean() - 0.001 * (tlp + tent).mean()
    return loss, (white.sum() + g.sum() + grp.sum() + pstats["clipfrac"] + vstats["clipfrac"]), vals, idx


def _inputs(gen):
    B, T, H, V = 4, 9, 16, 300
    hidden = rand(B * T, H, gen=gen).requires_grad_(True)
    head = rand(V, H, gen=gen, scale=0.25).requires_grad_(True)
    labels = torch.randint(0, V, (B * T,), generator=gen)
    values = rand(B, T, gen=gen).requires_grad_(True)
    logits = rand(B, T, V, gen=gen).requires_grad_(True)
    return (
        hidden,
        head,
        labels,
        rand(B, T, gen=gen) - 3,
        rand(B, T, gen=gen) - 3,
        values,
        rand(B, T, gen=gen),
        rand(B, gen=gen),
        make_mask(B, T, gen=gen),
        logits,
        rand(3, H, gen=gen),
        rand(40, H, gen=gen),
    )


def test_all_ops_compile_fullgraph(gen):
    torch._dynamo.reset()
    args = _inputs(gen)
    eager = ppo_step(*args)
    grads_eager = torch.autograd.grad(eager[0], [args[0], args[1], args[5], args[9]])
    compiled = torch.compile(ppo_step, fullgraph=True)
    out = compiled(*args)
    grads = torch.autograd.grad(out[0], [args[0], args[1], args[5], args[9]])
    torch.testing.assert_close(out[0], eager[0])
    torch.testing.assert_close(out[1], eager[1])
    assert torch.equal(out[3], eager[3])
    for a, b in zip(grads, grads_eager, strict=True):
        torch.testing.assert_close(a, b)
