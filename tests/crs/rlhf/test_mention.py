"""The policy's mention bonus: ``+ beta`` on the logits of items already in the context, applied
exactly on top of the fused head (log-probs, entropy, the catalog distribution, ranking,
generation), against the naive formula on materialised logits, gradients included."""

import pytest
import torch
from helpers import assert_same_gradients, next_token_logits, tiny_bonus_policy

from crs_fast.crs.rlhf import build as BU
from crs_fast.crs.rlhf import corpus as CO
from crs_fast.crs.rlhf import lm as LM
from crs_fast.crs.rlhf import policy as PO

pytest.importorskip("transformers")

BETA = 1.7


@pytest.fixture(scope="module", params=["collab", "plain"])
def setup(request):
    catalog, policy, tok, _ = tiny_bonus_policy(request.param == "collab", 11, BETA)
    items = [LM.item_token(i) for i in catalog.ids()]
    texts = [
        f"User : hi {items[2]} like {items[5]} {items[2]} System : {items[7]} hi {items[5]}",
        f"User : {items[1]} System :",
        "User : hi like System : hi",  # no item at all
    ]
    x, attn = CO.pad_right([tok(t, add_special_tokens=False)["input_ids"] for t in texts], tok.pad_token_id)
    return policy, x, attn


def _naive_logits(policy, x, attn, beta):
    """[B, T, V]: the head's logits from materialised ``h' @ W'.T`` plus ``beta`` on every item
    among ``x[b, :t+1]``."""
    h = policy.with_features(policy.top(x, attn), x)
    z = h @ policy.head().T
    bonus = torch.zeros_like(z)
    for b in range(x.shape[0]):
        for t in range(x.shape[1]):
            seen = x[b, : t + 1][policy.item_mask[x[b, : t + 1]]]
            bonus[b, t, seen] = 1.0
    return z + beta * bonus


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_logprobs_and_entropy_match_the_materialised_logits(setup, temperature):
    policy, x, attn = setup
    z = _naive_logits(policy, x, attn, policy.item_repeat)[:, :-1] / temperature
    logp = torch.log_softmax(z, -1)
    want_lp = logp.gather(-1, x[:, 1:, None]).squeeze(-1)
    want_ent = -(logp.exp() * logp).sum(-1)
    lp, ent, _ = policy.logprobs(x, attn, temperature=temperature)
    torch.testing.assert_close(lp, want_lp, atol=2e-5, rtol=2e-5)
    torch.testing.assert_close(ent, want_ent, atol=2e-5, rtol=2e-5)
    # gradients of every trained part agree with the naive formula's
    assert policy.item_repeat.requires_grad
    assert_same_gradients(policy, (lp, ent), (want_lp, want_ent), atol=1e-4, rtol=1e-4)
    # only the selected positions, zeros elsewhere
    sel = torch.zeros_like(lp, dtype=torch.bool)
    sel[:, 2::3] = True
    lp_s, ent_s, _ = policy.logprobs(x, attn, select=sel, temperature=temperature)
    torch.testing.assert_close(lp_s, torch.where(sel, want_lp, 0).detach(), atol=2e-5, rtol=2e-5)
    torch.testing.assert_close(ent_s, torch.where(sel, want_ent, 0).detach(), atol=2e-5, rtol=2e-5)


def test_catalog_distribution_ranking_and_generation_carry_the_bonus(setup):
    policy, x, attn = setup
    with torch.no_grad():
        z = _naive_logits(policy, x, attn, policy.item_repeat)
        at = torch.zeros_like(x[:, 1:], dtype=torch.bool)
        at[:, -2] = True
        at[0, 5] = True
        ban = torch.zeros(int(at.sum()), 12, dtype=torch.bool)
        ban[:, 3] = True
        _, _, _, item_lp = policy.logprobs(x, attn, items_at=at, item_ban=ban)
        want = torch.log_softmax(z[:, :-1][at][:, policy.item_ids].masked_fill(ban, float("-inf")), -1)
        torch.testing.assert_close(item_lp, want, atol=1e-5, rtol=1e-5)
        last = attn.sum(1) - 1
        zl = z[torch.arange(x.shape[0]), last][:, policy.item_ids]
        order = torch.sort(zl, descending=True, stable=True).indices
        assert policy.rank_items(x, attn, k=12).tolist() == order.tolist()
        assert policy.rank_items(x, attn, k=4).tolist() == order[:, :4].tolist()
        # excluded items are never ranked, mentioned or not
        exclude = torch.tensor([[2, 9], [0, -1], [-1, -1]])
        got = policy.rank_items(x, attn, k=6, exclude=exclude)
        for row, ex, o in zip(got.tolist(), exclude.tolist(), order.tolist(), strict=True):
            assert row == [i for i in o if i not in ex][:6]
        # generation's next-token logits after left-padded prompts
        logits = next_token_logits(policy, x, attn)
        torch.testing.assert_close(logits, z[torch.arange(x.shape[0]), last], atol=1e-4, rtol=1e-4)


def test_mentioned_items_lists_each_rows_distinct_items_at_first_mention(setup):
    policy, x, attn = setup
    items, first = policy.mentioned_items(x)
    for b in range(x.shape[0]):
        want = {}
        for t, tok in enumerate(x[b].tolist()):
            j = int(policy.item_index[tok])
            if j >= 0 and j not in want:
                want[j] = t
        got = {i: t for i, t in zip(items[b].tolist(), first[b].tolist(), strict=True) if i >= 0}
        assert got == want
        assert (first[b][items[b] < 0] == x.shape[1]).all()
    assert policy.mentioned_items(x[2:, :3])[0].shape == (1, 0)


def test_build_policy_switch_groups_and_errors(setup, tmp_path):
    from crs_fast.crs.rlhf.config import Config

    policy, x, attn = setup
    groups = BU.param_groups(policy, 1e-3, 2e-3)
    named = {
        n for g in groups if g["lr"] == 2e-3 for n, p in policy.named_parameters() if any(p is t for t in g["params"])
    }
    assert "item_repeat" in named
    cfg = Config.quick(real_data="off", collab_rank=4)
    data = CO.prepare_data(cfg, tmp_path)
    on, tok = BU.build_policy(cfg, data)
    assert on.item_repeat is not None and float(on.item_repeat.detach()) == cfg.mention_bonus > 0
    off, _ = BU.build_policy(Config.quick(real_data="off", collab_rank=4, mention_bonus=0.0), data)
    items = [LM.item_token(i) for i in data.catalog.ids()[:3]]
    text = f"User : {items[0]} and {items[1]} System : {items[2]} or {items[0]}"
    x, attn = CO.pad_right([tok(text, add_special_tokens=False)["input_ids"]], tok.pad_token_id)
    assert off.item_repeat is None and off.mention_bias(x) is None
    assert on.mention_bias(x)[0, on.item_ids[:3]].tolist() == [cfg.mention_bonus] * 3
    # without the bonus the policy is the plain one: equal log-probs
    with torch.no_grad():
        off.load_state_dict({k: v for k, v in on.state_dict().items() if k != "item_repeat"})
        on.item_repeat.zero_()
        torch.testing.assert_close(on.logprobs(x, attn)[0], off.logprobs(x, attn)[0], atol=1e-6, rtol=1e-6)
        on.item_repeat.fill_(cfg.mention_bonus)
    with pytest.raises(ValueError, match="mention_bonus must be finite"):
        PO.Policy(policy.lm, policy.item_ids, mention_bonus=float("nan"))
    with pytest.raises(ValueError, match="mention_bonus"):
        Config(mention_bonus=-1.0)


@pytest.mark.parametrize("beta", [-2.0, 0.0, 0.5, 6.0])
def test_correct_logprobs_is_the_softmax_of_the_shifted_logits(beta, gen):
    """The pure function on random logits (shape [3, 5], vocabulary 40, up to 4 distinct candidate
    items with bonuses of their own, some zero; labels among them and not), values and gradients
    (logits and bonuses) against log_softmax."""
    from crs_fast.crs.rlhf import mention as MN

    z = (3 * torch.randn(3, 5, 40, generator=gen, dtype=torch.float64)).requires_grad_()
    cand = torch.rand(3, 5, 40, generator=gen).argsort(-1)[..., :4]  # distinct items, as step_bonus gives
    on = torch.rand(3, 5, 4, generator=gen) < 0.6  # candidates with a zero bonus change nothing
    scale = (beta * on * (0.5 + torch.rand(3, 5, 4, generator=gen))).double().requires_grad_()
    labels = torch.where(
        torch.rand(3, 5, generator=gen) < 0.5, cand[..., 0], torch.randint(0, 40, (3, 5), generator=gen)
    )
    shift = torch.zeros(3, 5, 40, dtype=torch.float64).scatter(-1, cand, scale)
    shifted = torch.log_softmax(z + shift, -1)
    want_lp = shifted.gather(-1, labels[..., None]).squeeze(-1)
    want_ent = -(shifted.exp() * shifted).sum(-1)
    logp = torch.log_softmax(z, -1)
    lp, ent = logp.gather(-1, labels[..., None]).squeeze(-1), -(logp.exp() * logp).sum(-1)
    got_lp, got_ent = MN.correct_logprobs(
        lp.float(),
        ent.float(),
        z.gather(-1, labels[..., None]).squeeze(-1),
        z.gather(-1, cand),
        scale,
        shift.gather(-1, labels[..., None]).squeeze(-1),
    )
    torch.testing.assert_close(got_lp.double(), want_lp, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(got_ent.double(), want_ent, atol=1e-4, rtol=1e-4)
    if beta:
        g1 = torch.autograd.grad((got_lp + got_ent).sum(), (z, scale), retain_graph=True)
        g2 = torch.autograd.grad((want_lp + want_ent).sum(), (z, scale))
        for a, b in zip(g1, g2, strict=True):
            torch.testing.assert_close(a.double(), b, atol=1e-3, rtol=1e-3)


def test_step_bonus_matches_a_loop(gen):
    from crs_fast.crs.rlhf import mention as MN

    B, T, n = 3, 7, 9
    b = torch.randint(0, B - 1, (20,), generator=gen)  # the last row gets no step
    t = torch.randint(0, T, (20,), generator=gen)
    item = torch.randint(0, n, (20,), generator=gen)
    w = torch.randn(20, generator=gen, dtype=torch.float64)
    items, bonus = MN.step_bonus(b, t, item, w, B, T)
    want = torch.zeros(B, T, n, dtype=torch.float64)
    for j in range(20):
        want[b[j], t[j] :, item[j]] += w[j]
    for r in range(B):
        listed = [i for i in items[r].tolist() if i >= 0]
        assert listed == sorted(set(item[b == r].tolist()))
        assert not bonus[r][:, items[r] < 0].any()
        torch.testing.assert_close(bonus[r][:, : len(listed)], want[r][:, listed])
    got = MN.scatter_bonus(items, bonus[:, -1], n)
    torch.testing.assert_close(got, want[:, -1])
    empty = MN.step_bonus(*(torch.zeros(0, dtype=torch.int64) for _ in range(3)), torch.zeros(0), 2, 4)
    assert empty[0].shape == (2, 0) and empty[1].shape == (2, 4, 0)


def test_merge_topk_breaks_ties_to_the_lower_index():
    from crs_fast.crs.rlhf import mention as MN

    val, idx = torch.tensor([[5.0, 2.0, 2.0]]), torch.tensor([[4, 1, 6]])
    score, items = torch.tensor([[2.0, 9.0, 7.0]]), torch.tensor([[3, 0, -1]])
    assert MN.merge_topk(val, idx, score, items, 4).tolist() == [[0, 4, 1, 3]]
    assert MN.merge_topk(val, idx, score, torch.tensor([[-1, -1, -1]]), 2).tolist() == [[4, 1]]


def test_rows_of_is_indexing_with_a_gradient_that_does_not_vary_between_runs():
    """``rows_of(w, idx)`` equals ``w[idx]``; its gradient equals indexing's up to float order and
    is bit-equal from call to call. (Indexing's own backward, ``index_put_(accumulate=True)``,
    adds repeated indices in a thread-dependent order on CPU: at this size its gradient differed
    in the last bits in 22 of 30 repeats on the project's 2-core VM; SFT runs of the real recipe
    differed from the 5th step on.)"""
    from crs_fast.crs.rlhf.mention import rows_of

    gen = torch.Generator().manual_seed(0)
    w = torch.randn(525, 129, generator=gen)
    idx = torch.randint(0, 30, (4, 200), generator=gen)  # many repeats
    g = torch.randn(4, 200, 129, generator=gen)

    def grad(fn):
        x = w.clone().requires_grad_(True)
        (fn(x) * g).sum().backward()
        return x.grad

    assert torch.equal(rows_of(w, idx), w[idx])
    ref = grad(lambda x: rows_of(x, idx))
    torch.testing.assert_close(ref, grad(lambda x: x[idx]), rtol=1e-5, atol=1e-5)
    assert all(torch.equal(ref, grad(lambda x: rows_of(x, idx))) for _ in range(30))
    assert rows_of(w, torch.zeros(0, dtype=torch.long)).shape == (0, 129)
    assert torch.equal(rows_of(w[:, ::2], idx.T), w[:, ::2][idx.T])  # strided weight and index
    with pytest.raises(IndexError):
        rows_of(w, torch.tensor([525]))
