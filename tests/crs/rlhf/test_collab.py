"""Co-occurrence factors and the policy's collaborative item logits: the factorisation, the exact
logit formula through linear_logprobs, ranking and generation, and the config switch."""

import pytest
import torch
from helpers import next_token_logits, tiny_item_lm

from crs_fast.crs.rlhf import build as BU
from crs_fast.crs.rlhf import collab as CB
from crs_fast.crs.rlhf import corpus as CO
from crs_fast.crs.rlhf import lm as LM
from crs_fast.crs.rlhf import policy as PO

pytest.importorskip("transformers")


def _dialogues(catalog, groups):
    from crs_fast.crs.data.schema import Dialogue, Turn

    ids = catalog.ids()
    return [
        Dialogue(f"d{n}", [Turn("user", "hi", [ids[i] for i in g[:1]]), Turn("system", "ok", [ids[i] for i in g[1:]])])
        for n, g in enumerate(groups)
    ]


def test_counts_and_full_rank_factors_reproduce_log1p_counts():
    from crs_fast.crs.data import generate_catalog

    catalog = generate_catalog(9, seed=3)
    groups = [[0, 1, 2], [0, 1], [1, 1, 3], [4], [2, 0, 5, 6]]
    n, mentions = CB.cooccurrence_counts(_dialogues(catalog, groups), catalog)
    dense = n.to_dense()
    want = torch.zeros(9, 9)
    for g in groups:
        s = sorted(set(g))
        for a in s:
            for b in s:
                if a != b:
                    want[a, b] += 1
    torch.testing.assert_close(dense, want)
    assert mentions.tolist() == [3, 3, 2, 1, 1, 1, 1, 0, 0]
    p, q = CB.cooccurrence_factors(_dialogues(catalog, groups), catalog, rank=9)
    torch.testing.assert_close(p @ q.T, torch.log1p(want), atol=1e-4, rtol=0)
    p2, q2 = CB.cooccurrence_factors(_dialogues(catalog, groups), catalog, rank=2, seed=5)
    p3, _ = CB.cooccurrence_factors(_dialogues(catalog, groups), catalog, rank=2, seed=5)
    assert p2.shape == (9, 2) and torch.equal(p2, p3)  # deterministic for a seed
    z = CB.cooccurrence_factors(_dialogues(catalog, [[1], [2]]), catalog, rank=4)
    assert all(t.shape == (9, 4) and not t.any() for t in z)
    with pytest.raises(ValueError, match="rank must be > 0"):
        CB.cooccurrence_factors([], catalog, rank=0)


@pytest.fixture(scope="module")
def setup():
    catalog, lm, tok, ids = tiny_item_lm()
    gen = torch.Generator().manual_seed(7)
    p, q = torch.randn(12, 3, generator=gen), torch.randn(12, 3, generator=gen)
    policy = PO.Policy(lm, ids, train_layers=1, collab=(p, q), collab_weight=0.7)
    assert not policy.item_out.any()  # the policy starts as the co-occurrence recommender
    with torch.no_grad():
        policy.item_bias.copy_(torch.randn(12, generator=gen))
        policy.item_out.copy_(torch.randn(policy.item_out.shape, generator=gen))
    items = [LM.item_token(i) for i in catalog.ids()]
    texts = [f"User : hi {items[2]} like {items[5]} {items[2]} System : {items[7]} hi", f"User : {items[1]} System :"]
    x, attn = CO.pad_right([tok(t, add_special_tokens=False)["input_ids"] for t in texts], tok.pad_token_id)
    return policy, tok, p, q, x, attn


def _naive_logits(policy, p, q, x, attn):
    """Every next-token logit from the formula: h . w (+ b_i + 0.7 (sum over distinct items so far of P) . Q_i)."""
    h = policy.top(x, attn)
    w = policy._token_head().clone()
    w[policy.item_ids] = policy.item_out  # the items' own output rows
    out = torch.empty(*x.shape, w.shape[0])
    for b in range(x.shape[0]):
        seen: list[int] = []
        for t in range(x.shape[1]):
            j = int(policy.item_index[x[b, t]])
            if j >= 0 and j not in seen:
                seen.append(j)
            z = h[b, t] @ w.T
            ctx = p[seen].sum(0) if seen else torch.zeros(p.shape[1])
            z[policy.item_ids] += policy.item_bias + 0.7 * (q @ ctx)
            out[b, t] = z
    return out


def test_policy_item_logits_follow_the_formula_everywhere(setup):
    policy, tok, p, q, x, attn = setup
    with torch.no_grad():
        z = _naive_logits(policy, p, q, x, attn)
        lp, _, _ = policy.logprobs(x, attn)
        want = torch.log_softmax(z[:, :-1], -1).gather(-1, x[:, 1:, None]).squeeze(-1)
        torch.testing.assert_close(lp, want, atol=1e-5, rtol=1e-5)
        at = torch.zeros_like(x[:, 1:], dtype=torch.bool)
        at[:, 3] = True
        _, _, _, item_lp = policy.logprobs(x, attn, items_at=at)
        torch.testing.assert_close(item_lp, torch.log_softmax(z[:, 3][:, policy.item_ids], -1), atol=1e-5, rtol=1e-5)
        last = attn.sum(1) - 1
        zl = z[torch.arange(2), last][:, policy.item_ids]
        assert policy.rank_items(x, attn, k=5).tolist() == zl.topk(5).indices.tolist()
        # generation scores the next token from the same features (left-padded prompts, KV cache)
        logits = next_token_logits(policy, x, attn)
        torch.testing.assert_close(logits[:, policy.item_ids], zl, atol=1e-4, rtol=1e-4)


def test_item_bias_trains_and_zero_weight_is_the_plain_policy(setup):
    policy, tok, p, q, x, attn = setup
    lp, _, _ = policy.logprobs(x, attn)
    lp.sum().backward()
    for p_ in (policy.item_bias, policy.item_out):
        assert p_.grad is not None and p_.grad.abs().sum() > 0
    assert not policy.collab_p.requires_grad and {"item_bias", "item_out"} <= {
        n
        for g in BU.param_groups(policy, 1e-3, 2e-3)
        if g["lr"] == 2e-3
        for n, p_ in policy.named_parameters()
        if any(p_ is t for t in g["params"])
    }
    plain = PO.Policy(policy.lm, policy.item_ids, train_layers=1)
    off = PO.Policy(policy.lm, policy.item_ids, train_layers=1, collab=(p, q), collab_weight=0.0)
    with torch.no_grad():
        off.item_out.copy_(plain.item_rows())
        torch.testing.assert_close(off.logprobs(x, attn)[0], plain.logprobs(x, attn)[0], atol=1e-6, rtol=1e-6)
    assert off.head().shape[1] == plain.head().shape[1] + 4 and plain.item_bias_dims() == 0
    with pytest.raises(ValueError, match=r"collab factors must both be \[12, r\]"):
        PO.Policy(policy.lm, policy.item_ids, collab=(p, q[:, :2]))


def test_build_policy_uses_the_training_dialogues_cooccurrence(tmp_path):
    from crs_fast.crs.rlhf.config import Config

    cfg = Config.quick(real_data="off", collab_rank=4)
    data = CO.prepare_data(cfg, tmp_path)
    policy, _ = BU.build_policy(cfg, data)
    p, q = CB.cooccurrence_factors(data.train, data.catalog, 4, cfg.seed)
    torch.testing.assert_close(policy.collab_p, p)
    assert policy.item_bias_dims() == 5
    # the learned item prior starts at item_prior * log(1 + training mentions)
    _, mentions = CB.cooccurrence_counts(data.train, data.catalog)
    assert mentions.max() > mentions.min()
    torch.testing.assert_close(policy.item_bias.detach(), cfg.item_prior * torch.log1p(mentions))
    flat, _ = BU.build_policy(Config.quick(real_data="off", collab_rank=4, item_prior=0.0), data)
    assert not flat.item_bias.any()
    with pytest.raises(ValueError, match=r"item_prior must be \["):
        PO.Policy(policy.lm, policy.item_ids, collab=(p, p), item_prior=torch.zeros(3))
    off, _ = BU.build_policy(Config.quick(real_data="off", collab_rank=0), data)
    assert off.item_bias is None
    # collab_norm damps each context item's row by its popularity; the item side is unchanged
    damped, _ = BU.build_policy(Config.quick(real_data="off", collab_rank=4, collab_norm=0.5), data)
    torch.testing.assert_close(damped.collab_p, p / torch.sqrt(1 + mentions)[:, None])
    torch.testing.assert_close(damped.collab_q, policy.collab_q)
    with pytest.raises(ValueError, match="Config.collab_norm: expected >= 0"):
        Config(collab_norm=-0.5)


def test_clipped_context_keeps_the_items_mentioned_before_the_window(setup):
    policy, tok, p, q, x, attn = setup
    ids = x[0, : int(attn[0].sum())].tolist()  # "User : hi <a> like <b> <a> System : <c> hi"
    items = [i for i in ids if policy.item_index[i] >= 0]
    clipped = CO.clip_context(tok, ids, 4)
    assert clipped[-4:] == ids[-4:] and len(ids) > 4
    early = [i for i in dict.fromkeys(ids[:-4]) if policy.item_index[i] >= 0 and i not in ids[-4:]]
    assert early and clipped == early + ids[-4:]  # distinct, first-mention order, nothing else
    assert set(clipped) & set(items) == set(items)  # every item of the dialogue is still seen
    assert CO.clip_context(tok, ids, len(ids)) == ids
    ctx = policy.context_features(torch.tensor([clipped]))[0, -1]
    full = policy.context_features(torch.tensor([ids]))[0, -1]
    torch.testing.assert_close(ctx, full)  # the co-occurrence features of the whole dialogue
