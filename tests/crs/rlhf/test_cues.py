"""Recency-weighted co-occurrence features and genre cues in the policy's item logits: the
building blocks against naive loops, the exact logit formula through the fused head, ranking and
generation, the config switches and their errors; and PPO's frozen item rows."""

import pytest
import torch
from helpers import next_token_logits

from crs_fast.crs.rlhf import build as BU
from crs_fast.crs.rlhf import collab as CB
from crs_fast.crs.rlhf import corpus as CO
from crs_fast.crs.rlhf import cues as CU
from crs_fast.crs.rlhf import lm as LM
from crs_fast.crs.rlhf import mention as ME
from crs_fast.crs.rlhf import policy as PO
from crs_fast.crs.rlhf.config import Config

pytest.importorskip("transformers")

WORDS = "scary funny war comedy horror"


def _naive_decayed(p, items, first, length, decay):
    out = torch.zeros(items.shape[0], length, p.shape[1])
    for b in range(items.shape[0]):
        for t in range(length):
            seen = [int(items[b, k]) for k in range(items.shape[1]) if first[b, k] <= t]
            for age, c in enumerate(reversed(seen)):
                out[b, t] += decay**age * p[c]
    return out


@pytest.mark.parametrize("decay", [1.0, 0.7, 0.3])
def test_decayed_sums_match_a_loop(decay):
    gen = torch.Generator().manual_seed(int(decay * 10))
    p = torch.randn(9, 4, generator=gen)
    items = torch.tensor([[3, 0, 7, -1], [5, -1, -1, -1], [-1, -1, -1, -1]])
    first = torch.tensor([[1, 2, 6, 8], [0, 8, 8, 8], [8, 8, 8, 8]])
    got = CB.decayed_sums(p, items, first, 8, decay)
    torch.testing.assert_close(got, _naive_decayed(p, items, first, 8, decay))
    assert not got[2].any()  # a row without items has no collaborative features
    for bad in (0.0, 1.5, -0.2):
        with pytest.raises(ValueError, match="decay must be in"):
            CB.decayed_sums(p, items, first, 8, bad)


def test_decayed_sums_stay_finite_for_long_contexts():
    p = torch.ones(300, 2)
    items = torch.arange(300)[None]
    got = CB.decayed_sums(p, items, items.clone(), 300, 0.5)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got[0, -1], torch.full((2,), 2.0), atol=1e-6, rtol=0)  # sum of 0.5^k -> 2


@pytest.fixture(scope="module")
def setup():
    from crs_fast.crs.data import generate_catalog

    catalog = generate_catalog(12, seed=4)
    lm, tok = LM.load_lm(
        "tiny", [it.title for it in catalog.items.values()] + [f"User System : hi like {WORDS}"], seed=1
    )
    ids = LM.add_item_tokens(lm, tok, catalog)
    gen = torch.Generator().manual_seed(11)
    p, q = torch.randn(12, 3, generator=gen), torch.randn(12, 3, generator=gen)
    vocab = lm.get_output_embeddings().weight.shape[0]
    token_cue, a = CU.cue_tokens(tok, vocab), CU.item_cues(catalog)
    policy = PO.Policy(
        lm, ids, train_layers=1, collab=(p, q), collab_decay=0.6, cues=(token_cue, a), cue_weight=0.8, mention_bonus=1.5
    )
    with torch.no_grad():
        policy.item_bias.copy_(torch.randn(12, generator=gen))
        policy.item_out.copy_(torch.randn(policy.item_out.shape, generator=gen))
    items = [LM.item_token(i) for i in catalog.ids()]
    texts = [
        f"User : scary {items[2]} like {items[5]} {items[2]} funny System : {items[7]} hi scary",
        f"User : war {items[1]} System :",
        "User : hi System :",
    ]
    x, attn = CO.pad_right([tok(t, add_special_tokens=False)["input_ids"] for t in texts], tok.pad_token_id)
    return catalog, policy, tok, p, q, token_cue, a, x, attn


def test_cue_tokens_and_item_cues(setup):
    catalog, policy, tok, *_ = setup
    genres = sorted(CU.GENRE_WORDS)
    token_cue = policy.token_cue
    for word, genre in (("scary", "horror"), ("funny", "comedy"), ("war", "war"), ("comedy", "comedy")):
        assert int(token_cue[tok(word, add_special_tokens=False)["input_ids"][0]]) == genres.index(genre)
    assert int(token_cue[tok("hi", add_special_tokens=False)["input_ids"][0]]) == -1
    assert tok.unk_token_id is None or int(token_cue[tok.unk_token_id]) == -1  # unknown words name nothing
    a = CU.item_cues(catalog)
    for k, i in enumerate(catalog.ids()):
        named = [g for g in dict.fromkeys(catalog[i].attributes.get("genre", [])) if g in CU.GENRE_WORDS]
        want = torch.zeros(len(genres))
        for g in named:
            want[genres.index(g)] = 1 / len(named)
        torch.testing.assert_close(a[k], want)


def test_context_cues_are_cumulative_and_count_once():
    token_cue = torch.tensor([-1, 0, 1, 0, -1])
    x = torch.tensor([[0, 1, 4, 3, 2, 0], [4, 4, 4, 4, 4, 4]])
    got = CU.context_cues(token_cue, x, 2)
    want = torch.tensor([[[0, 0], [1, 0], [1, 0], [1, 0], [1, 1], [1, 1]], [[0, 0]] * 6], dtype=torch.float32)
    torch.testing.assert_close(got, want)


def _naive_logits(policy, p, q, token_cue, a, x, attn):
    """Every next-token logit from the formula: h . w_i + b_i + (sum_c 0.6^age_c P_c) . Q_i + 0.8 named . A_i
    + 1.5 [i mentioned]."""
    h = policy.top(x, attn)
    w = policy._token_head().clone()
    w[policy.item_ids] = policy.item_out
    out = torch.empty(*x.shape, w.shape[0])
    for b in range(x.shape[0]):
        seen: list[int] = []
        named = torch.zeros(a.shape[1])
        for t in range(x.shape[1]):
            j = int(policy.item_index[x[b, t]])
            if j >= 0 and j not in seen:
                seen.append(j)
            if token_cue[x[b, t]] >= 0:
                named[token_cue[x[b, t]]] = 1.0
            z = h[b, t] @ w.T
            ctx = sum((0.6**age * p[c] for age, c in enumerate(reversed(seen))), torch.zeros(p.shape[1]))
            z[policy.item_ids] += policy.item_bias + q @ ctx + 0.8 * (a @ named)
            z[policy.item_ids[seen]] += 1.5
            out[b, t] = z
    return out


def test_policy_item_logits_follow_the_formula(setup):
    catalog, policy, tok, p, q, token_cue, a, x, attn = setup
    assert policy.item_bias_dims() == 1 + 3 + len(CU.GENRE_WORDS)
    with torch.no_grad():
        z = _naive_logits(policy, p, q, token_cue, a, x, attn)
        lp, _, _ = policy.logprobs(x, attn)
        want = torch.log_softmax(z[:, :-1], -1).gather(-1, x[:, 1:, None]).squeeze(-1)
        torch.testing.assert_close(lp * attn[:, 1:], want * attn[:, 1:], atol=1e-5, rtol=1e-5)
        last = attn.sum(1) - 1
        zl = z[torch.arange(x.shape[0]), last][:, policy.item_ids]
        assert policy.rank_items(x, attn, k=5).tolist() == zl.topk(5).indices.tolist()
        logits = next_token_logits(policy, x, attn)
        torch.testing.assert_close(logits[:, policy.item_ids], zl, atol=1e-4, rtol=1e-4)


def test_decay_one_is_the_plain_sum(setup):
    catalog, policy, tok, p, q, token_cue, a, x, attn = setup
    plain = PO.Policy(policy.lm, policy.item_ids, train_layers=1, collab=(p, q))
    items, first = ME.mentioned_items(plain.item_index, x)
    got = plain.context_features(x)[..., 1:]
    torch.testing.assert_close(got, CB.decayed_sums(p, items, first, x.shape[1], 1.0), atol=1e-6, rtol=1e-6)


def test_policy_and_config_errors(setup):
    catalog, policy, tok, p, q, token_cue, a, x, attn = setup
    with pytest.raises(ValueError, match="cues need collab factors"):
        PO.Policy(policy.lm, policy.item_ids, cues=(token_cue, a))
    with pytest.raises(ValueError, match="cues need collab factors"):
        PO.Policy(policy.lm, policy.item_ids, collab=(p, q), cues=(token_cue[:-1], a))
    with pytest.raises(ValueError, match="must be finite"):
        PO.Policy(policy.lm, policy.item_ids, collab=(p, q), cues=(token_cue, a), cue_weight=float("nan"))
    with pytest.raises(ValueError, match="collab_decay must be in"):
        PO.Policy(policy.lm, policy.item_ids, collab=(p, q), collab_decay=0.0)
    for key, bad in (
        ("collab_decay", 0.0),
        ("collab_decay", 1.2),
        ("genre_cues", -0.5),
        ("ppo_freeze", "bias"),
        ("ppo_freeze", "trunk"),
    ):
        with pytest.raises(ValueError, match=f"Config.{key}"):
            Config(**{key: bad})


def test_build_policy_switches(tmp_path):
    data = CO.prepare_data(Config.quick(real_data="off"), tmp_path)
    off, _ = BU.build_policy(Config.quick(real_data="off", collab_rank=4), data)
    on, tok = BU.build_policy(Config.quick(real_data="off", collab_rank=4, genre_cues=0.5, collab_decay=0.5), data)
    assert off.cue_cols.shape[1] == 0 and off.collab_decay == 1.0
    assert on.cue_cols.shape[1] == len(CU.GENRE_WORDS) and on.collab_decay == 0.5
    torch.testing.assert_close(on.cue_cols, 0.5 * CU.item_cues(data.catalog))
    assert on.head().shape[1] == off.head().shape[1] + len(CU.GENRE_WORDS)
    no_collab, _ = BU.build_policy(Config.quick(real_data="off", collab_rank=0, genre_cues=0.5), data)
    assert no_collab.item_bias_dims() == 0  # cues ride on the co-occurrence columns: none without them


def test_frozen_rows_leave_ppo_groups(setup):
    catalog, policy, *_ = setup
    policy.zero_grad()
    assert BU.FROZEN["rows"] == BU.ROW_PARTS and BU.FROZEN["items"] == PO.ITEM_PARTS and not BU.FROZEN["none"]
    assert BU.FROZEN["query"] == PO.ITEM_PARTS + BU.TRUNK_PARTS
    groups = BU.param_groups(policy, 1e-3, 2e-3, frozen=BU.FROZEN["rows"])
    in_groups = {id(t) for g in groups for t in g["params"]}
    for name, prm in policy.named_parameters():
        if name.startswith(BU.ROW_PARTS):
            assert not prm.requires_grad and id(prm) not in in_groups
    assert id(policy.item_bias) in in_groups and id(policy.item_repeat) in in_groups
    for name, prm in policy.named_parameters():  # restore for the module's other tests
        if name.startswith(BU.ROW_PARTS):
            prm.requires_grad_(True)
