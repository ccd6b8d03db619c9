"""The nearest-neighbour context bonus: the matched text, the cue matcher against a scan, the bonus
against its formula at every position (replaced at the next cue, a context never voting for
itself), the policy's logits, log-probs and rankings carrying it, the build switch and its errors."""

import copy
import zlib

import pytest
import torch
from helpers import next_token_logits

from crs_fast.crs.data import generate_catalog
from crs_fast.crs.rlhf import build as BU
from crs_fast.crs.rlhf import corpus as CO
from crs_fast.crs.rlhf import lm as LM
from crs_fast.crs.rlhf import mention as ME
from crs_fast.crs.rlhf import neighbours as NB
from crs_fast.crs.rlhf import policy as PO
from crs_fast.crs.rlhf.config import Config

pytest.importorskip("transformers")

K, TAU, W = 4, 0.3, 1.7


def fake_encode(texts):
    """Unit bag-of-words vectors (16 hashed dimensions): similar word sets, similar vectors."""
    out = torch.full((len(texts), 16), 1e-3)
    for n, t in enumerate(texts):
        for w in t.lower().split():
            out[n, zlib.crc32(w.encode()) % 16] += 1.0
    return torch.nn.functional.normalize(out, dim=-1)


@pytest.fixture(scope="module")
def setup():
    catalog = generate_catalog(12, seed=4)
    words = "User System : hi like scary funny space old new"
    lm, tok = LM.load_lm("tiny", [it.title for it in catalog.items.values()] + [words], seed=1)
    ids = LM.add_item_tokens(lm, tok, catalog)
    gen = torch.Generator().manual_seed(5)
    key_texts = ["hi scary", "like scary old", "funny space", "funny new", "scary space", "hi hi", "old new"]
    keys = fake_encode(key_texts)
    targets = torch.randint(0, 12, (len(key_texts),), generator=gen)
    bonus = NB.NeighbourBonus(tok, catalog, keys, targets, fake_encode, k=K, tau=TAU, weight=W, turns=2)
    policy = PO.Policy(lm, ids, train_layers=1, collab=(torch.randn(12, 3, generator=gen),) * 2, mention_bonus=1.5)
    with torch.no_grad():
        policy.item_bias.copy_(torch.randn(12, generator=gen))
        policy.item_out.copy_(torch.randn(policy.item_out.shape, generator=gen))
    return catalog, tok, policy, bonus, keys, targets


def naive(bonus, keys, targets, text):
    """[12]: ``W s_i / max s`` from the formula, the context's own text left out."""
    sims = fake_encode([text])[0] @ keys.T
    sims[sims >= 1 - 1e-6] = float("-inf")
    v, j = sims.topk(K)
    s = torch.zeros(12)
    for vv, jj in zip(v.tolist(), j.tolist(), strict=True):
        if vv > float("-inf"):
            s[targets[jj]] += torch.exp(torch.tensor((vv - v[0].item()) / TAU))
    return W * s / s.max() if s.max() > 0 else s


def test_context_text_takes_the_last_turns_newest_first_with_titles():
    catalog = generate_catalog(5, seed=0)
    i0 = catalog.ids()[0]
    p = f"User: hi\nSystem: try {LM.item_token(i0)}\nUser:  no,   thanks\nSystem:"
    assert NB.context_text(p, catalog, 2) == f"User: no, thanks System: try {catalog.items[i0].title}"
    assert NB.context_text(p, catalog, 9).endswith("User: hi")
    assert NB.context_text("User: hi", catalog, 1) == "User: hi"  # no cue at the end: nothing dropped


def test_cue_positions_match_a_scan():
    gen = torch.Generator().manual_seed(2)
    x = torch.randint(0, 4, (5, 40), generator=gen)
    cue = torch.tensor([1, 2])
    b, t = NB.cue_positions(cue, x)
    want = [(r, s + 1) for r in range(5) for s in range(39) if x[r, s : s + 2].tolist() == [1, 2]]
    assert list(zip(b.tolist(), t.tolist(), strict=True)) == want and want
    assert all(len(v) == 0 for v in NB.cue_positions(cue, x[:, :1]))


def test_bonus_follows_the_formula_at_every_position(setup):
    catalog, tok, policy, bonus, keys, targets = setup
    it = [LM.item_token(i) for i in catalog.ids()]
    texts = [f"User: hi scary\nSystem: {it[3]} like\nUser: funny space\nSystem: {it[1]}", "User: hi\nSystem:", "hi old"]
    x, _ = CO.pad_right([tok(t, add_special_tokens=False)["input_ids"] for t in texts], tok.pad_token_id)
    items, steps = ME.step_bonus(*bonus.events(x), x.shape[0], x.shape[1])
    got = torch.stack([ME.scatter_bonus(items, steps[:, t], 12) for t in range(x.shape[1])], 1)  # [B, T, 12]
    cues = {(int(b), int(t)) for b, t in zip(*NB.cue_positions(bonus.cue, x), strict=True)}
    assert {b for b, _ in cues} == {0, 1} and len(cues) == 3
    for r in range(x.shape[0]):
        want = torch.zeros(12)
        for t in range(x.shape[1]):
            if (r, t) in cues:
                want = naive(bonus, keys, targets, NB.context_text(tok.decode(x[r, : t + 1]), catalog, 2))
            torch.testing.assert_close(got[r, t], want, atol=1e-6, rtol=1e-6)
    assert got[0].abs().sum(-1).nonzero().numel() > 0 and not got[2].any()
    # a context never votes for itself: the key with the very same text is left out
    own = NB.NeighbourBonus(
        tok,
        catalog,
        fake_encode(["hi hi", "hi old"]),
        torch.tensor([7, 2]),
        fake_encode,
        k=2,
        tau=TAU,
        weight=W,
        turns=1,
    )
    items, w = own.scores(["hi hi"])[0]
    assert items.tolist() == [2] and w.tolist() == pytest.approx([W])


def test_prefix_cache_decodes_each_context_once_and_changes_nothing(setup, monkeypatch):
    catalog, tok, policy, bonus, keys, targets = setup
    it = [LM.item_token(i) for i in catalog.ids()]
    texts = [f"User: hi scary\nSystem: {it[2]} old\nUser: funny\nSystem:", f"User: like {it[5]}\nSystem:"]
    rows = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    left, _ = CO.pad_right(rows, tok.pad_token_id)
    fresh = copy.deepcopy(bonus)
    fresh._texts, fresh._memo = {}, {}
    first = fresh.events(left)
    calls = []
    decode = tok.decode
    monkeypatch.setattr(tok, "decode", lambda *a, **k: calls.append(1) or decode(*a, **k))
    # the same rows again, left-padded and with a token appended (as at the next decoding step)
    pad = max(map(len, rows)) + 1
    grown = torch.tensor([[tok.pad_token_id] * (pad - len(r) - 1) + r + [rows[0][0]] for r in rows])
    again = fresh.events(grown)
    assert calls == []  # every cue's prefix was decoded by the first call
    shift = grown.shape[1] - 1 - torch.tensor([len(r) for r in rows])
    for a, b in zip(first[2:], again[2:], strict=True):
        assert torch.equal(a, b)
    assert torch.equal(first[0], again[0]) and torch.equal(first[1] + shift[first[0]], again[1])
    assert len(first[0]) > 0


def test_policy_carries_the_bonus_in_logits_logprobs_and_rankings(setup):
    catalog, tok, policy, bonus, keys, targets = setup
    it = [LM.item_token(i) for i in catalog.ids()]
    texts = [
        f"User: like scary\nSystem: {it[2]} funny\nUser: old new\nSystem: {it[5]} hi",
        "User: funny space\nSystem:",
    ]
    x, attn = CO.pad_right([tok(t, add_special_tokens=False)["input_ids"] for t in texts], tok.pad_token_id)
    with torch.no_grad():
        plain_lp, plain_ent, _ = policy.logprobs(x, attn)
        base = next_token_logits(policy, x, attn)
        policy.neighbours = bonus
        try:
            lp, ent, _ = policy.logprobs(x, attn)
            z = policy.with_features(policy.top(x, attn), x) @ policy.head().T
            found = policy.context_bonus(x)
            extra = torch.stack([ME.scatter_bonus(found[0], found[1][:, t], 12) for t in range(x.shape[1])], 1)
            z[:, :, policy.item_ids] += extra
            logp = torch.log_softmax(z[:, :-1], -1)
            torch.testing.assert_close(lp, logp.gather(-1, x[:, 1:, None]).squeeze(-1), atol=2e-5, rtol=2e-5)
            torch.testing.assert_close(ent, -(logp.exp() * logp).sum(-1), atol=2e-5, rtol=2e-5)
            assert not torch.allclose(lp, plain_lp)
            cb, ct = NB.cue_positions(bonus.cue, x)
            at = [max(t for b, t in zip(cb.tolist(), ct.tolist(), strict=True) if b == r) for r in range(2)]
            kb = torch.stack(
                [
                    naive(bonus, keys, targets, NB.context_text(tok.decode(x[r, : at[r] + 1]), catalog, 2))
                    for r in range(2)
                ]
            )
            logits = next_token_logits(policy, x, attn)
            torch.testing.assert_close(logits[:, policy.item_ids], base[:, policy.item_ids] + kb, atol=1e-4, rtol=1e-4)
            order = torch.sort(logits[:, policy.item_ids], descending=True, stable=True).indices
            assert policy.rank_items(x, attn, k=12).tolist() == order.tolist()
            ref = copy.deepcopy(policy)  # the frozen copy shares the encoder and its cache
            assert ref.neighbours.encode is bonus.encode and ref.neighbours._memo is bonus._memo
            assert not any("neighbours" in k for k in policy.state_dict())  # rebuilt, not checkpointed
        finally:
            policy.neighbours = None


def test_build_switch_and_errors(setup, tmp_path, monkeypatch):
    catalog, tok, policy, bonus, keys, targets = setup
    data = CO.prepare_data(Config.quick(real_data="off"), tmp_path)
    off, _ = BU.build_policy(Config.quick(real_data="off"), data)
    assert off.neighbours is None
    monkeypatch.setattr(BU, "_ENCODER", type("E", (), {"encode": staticmethod(fake_encode)})())
    data.train[0].id = "real-0"  # one non-synthetic dialogue: its recommender turns are the keys
    on, tok2 = BU.build_policy(Config.quick(real_data="off", knn_weight=0.5, knn_k=3), data)
    contexts, want = NB.training_keys([data.train[0]], data.catalog)
    assert on.neighbours is not None and len(on.neighbours.keys) == len(want) > 0
    assert on.neighbours.k == 3 and on.neighbours.weight == 0.5
    with pytest.raises(ValueError, match="need k >= 1"):
        NB.NeighbourBonus(tok, catalog, keys, targets, fake_encode, k=0, tau=TAU, weight=W, turns=1)
    with pytest.raises(ValueError, match="need k >= 1"):
        NB.NeighbourBonus(tok, catalog, keys, targets, fake_encode, k=2, tau=TAU, weight=float("nan"), turns=1)
    with pytest.raises(ValueError, match="keys must be"):
        NB.NeighbourBonus(tok, catalog, keys, targets[:-1], fake_encode, k=2, tau=TAU, weight=W, turns=1)
    for key, bad in (("knn_k", 0), ("knn_tau", 0.0), ("knn_turns", 0), ("knn_weight", -1.0)):
        with pytest.raises(ValueError, match=f"Config.{key}"):
            Config(**{key: bad})


def test_item_fit_queries_carry_the_bonus_without_people(setup):
    from crs_fast.crs.rlhf import item_fit as IF
    from crs_fast.crs.rlhf.evaluate import Sample

    catalog, tok, policy, bonus, keys, targets = setup
    ids = catalog.ids()
    prompts = ["User: funny space\nSystem:", f"User: like scary old {LM.item_token(ids[1])}\nSystem:"]
    samples = [Sample(prompts[0], ids[4], []), Sample(prompts[1], ids[2], [ids[1]])]
    policy.neighbours = bonus
    try:
        with torch.no_grad():
            data = IF.queries(policy, tok, samples, {i: n for n, i in enumerate(ids)}, Config.quick(real_data="off"))
            assert policy.people is None and data.named is not None
            got = IF.item_logits(policy, data)
            for n, p in enumerate(prompts):
                xp, ap = CO.pad_right([tok(p, add_special_tokens=False)["input_ids"]], tok.pad_token_id)
                torch.testing.assert_close(
                    got[n], next_token_logits(policy, xp, ap)[0, policy.item_ids], atol=1e-4, rtol=1e-4
                )
    finally:
        policy.neighbours = None


def test_events_on_strided_rows_and_rows_without_cues(setup):
    catalog, tok, policy, bonus, keys, targets = setup
    it = [LM.item_token(i) for i in catalog.ids()]
    texts = [f"User: hi scary {it[1]}\nSystem:", "User: funny space\nSystem:", "hi old"]
    x, _ = CO.pad_right([tok(t, add_special_tokens=False)["input_ids"] for t in texts], tok.pad_token_id)
    wide = torch.stack([x, torch.zeros_like(x)], -1).reshape(x.shape[0], -1)[:, ::2]  # a strided view
    assert not wide.is_contiguous() and torch.equal(wide, x)
    for a, b in zip(bonus.events(x), bonus.events(wide), strict=True):
        assert torch.equal(a, b)
    none = bonus.events(x[2:])  # a row without a cue: no events
    assert all(len(v) == 0 for v in none)
