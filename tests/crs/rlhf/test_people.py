"""People named in the dialogue as a bonus on their items' logits: the item-person weights and the
token-sequence matcher against loops, the exact logit formula (with the mention bonus) through the
fused head's log-probs, entropy and gradients, the catalog distribution, ranking, generation and
the item fit's queries; the config switch and its errors."""

import pytest
import torch
from helpers import assert_same_gradients, next_token_logits

from crs_fast.crs.data.schema import Catalog, Item
from crs_fast.crs.rlhf import build as BU
from crs_fast.crs.rlhf import corpus as CO
from crs_fast.crs.rlhf import item_fit as IF
from crs_fast.crs.rlhf import lm as LM
from crs_fast.crs.rlhf import people as PE
from crs_fast.crs.rlhf import policy as PO
from crs_fast.crs.rlhf.config import Config
from crs_fast.crs.rlhf.evaluate import Sample

pytest.importorskip("transformers")

BETA, NU = 1.5, 0.9


def test_item_people_weights_and_names():
    cat = Catalog(
        [
            Item("a", "A", {"director": ["Tom Hanks"], "star": ["Cher", "Ann Lee", "Bo Ray Dee"]}),
            Item("b", "B", {"director": ["tom  hanks", "Kim Wu"], "star": ["Ann Lee", "Ann Lee"]}),
            Item("c", "C", {"genre": ["comedy"]}),
        ]
    )
    names, b = PE.item_people(cat)
    assert names == ["Tom Hanks", "Ann Lee", "Bo Ray Dee", "Kim Wu"]  # "Cher" has one word; "tom  hanks" merged
    want = torch.zeros(3, 4)
    want[0, 0], want[0, 1], want[0, 2] = 1.0, 1 / 3, 1 / 3  # three stars, "Cher" counted in the 1 / n
    want[1, 0], want[1, 3], want[1, 1] = 0.5, 0.5, 1.0  # a repeated star counts once
    torch.testing.assert_close(b, want)
    ptr, items, w = PE.csr(b)
    for p in range(4):
        got = dict(zip(items[ptr[p] : ptr[p + 1]].tolist(), w[ptr[p] : ptr[p + 1]].tolist(), strict=True))
        assert got == {i: float(b[i, p]) for i in range(3) if b[i, p]}


class _Tok:
    """Whitespace tokenizer over a fixed vocabulary (unknown words: id 0)."""

    unk_token_id = 0

    def __init__(self, words):
        self.vocab = {w: n + 1 for n, w in enumerate(words)}

    def __call__(self, texts, add_special_tokens=False):
        return {"input_ids": [[self.vocab.get(w, 0) for w in t.split()] for t in texts]}


def test_named_people_matches_a_scan(gen):
    words = ["tom", "hanks", "ann", "lee", "bo", "ray", "dee", "x", "y", "Tom", "Hanks", "Ann", "Lee"]
    tok = _Tok(words)
    names = ["Tom Hanks", "Ann Lee", "Bo Ray Dee", "Zed Unknown"]
    table = PE.name_table(tok, names)
    seqs = {p: [] for p in range(len(names))}
    for p, n in enumerate(names):
        for form in (n, n.lower()):
            ids = tok([form])["input_ids"][0]
            if 0 not in ids and ids not in seqs[p]:
                seqs[p].append(ids)
    assert not seqs[3] and 3 not in table["person"].tolist()  # a name with an unknown word never matches
    x = torch.randint(1, len(words) + 1, (6, 30), generator=gen)
    x[:2] = tok.vocab["x"]  # rows 0 and 1 name one person each, where planted
    x[0, 3:6] = torch.tensor(tok(["bo ray dee"])["input_ids"][0])
    x[1, 28:30] = torch.tensor(tok(["Tom Hanks"])["input_ids"][0])
    b, t, p = PE.named_people(table, x)
    got = set(zip(b.tolist(), t.tolist(), p.tolist(), strict=True))
    want = set()
    for r in range(x.shape[0]):
        for person, forms in seqs.items():
            ends = [
                s + len(f) - 1
                for f in forms
                for s in range(x.shape[1] - len(f) + 1)
                if x[r, s : s + len(f)].tolist() == f
            ]
            if ends:
                want.add((r, min(ends), person))
    assert got == want and (0, 5, 2) in got and (1, 29, 0) in got
    assert all(len(v) == 0 for v in PE.named_people(table, x[:, :1]))  # too short for any name


@pytest.fixture(scope="module")
def setup():
    from crs_fast.crs.data import generate_catalog

    catalog = generate_catalog(12, seed=4)
    names, b = PE.item_people(catalog)
    lm, tok = LM.load_lm(
        "tiny", [it.title for it in catalog.items.values()] + ["User System : hi like", " ".join(names)], seed=1
    )
    ids = LM.add_item_tokens(lm, tok, catalog)
    gen = torch.Generator().manual_seed(11)
    p, q = torch.randn(12, 3, generator=gen), torch.randn(12, 3, generator=gen)
    policy = PO.Policy(
        lm,
        ids,
        train_layers=1,
        collab=(p, q),
        mention_bonus=BETA,
        people=(PE.name_table(tok, names), b),
        people_weight=NU,
    )
    with torch.no_grad():
        policy.item_bias.copy_(torch.randn(12, generator=gen))
        policy.item_out.copy_(torch.randn(policy.item_out.shape, generator=gen))
    items = [LM.item_token(i) for i in catalog.ids()]
    texts = [
        f"User : {names[1]} {items[2]} like {items[5]} {names[1]} {names[4]} System : {items[7]} hi {names[0]}",
        f"User : hi {names[3]} System :",
        f"User : {items[1]} System :",
        "User : hi System :",
    ]
    x, attn = CO.pad_right([tok(t, add_special_tokens=False)["input_ids"] for t in texts], tok.pad_token_id)
    return catalog, policy, tok, names, b, x, attn


def _naive_logits(policy, b_mat, table, x, attn):
    """Every next-token logit from the formula: the head's logits + beta [i mentioned up to t] +
    NU sum_{p named up to t} B_ip, the names found by a loop over token windows."""
    z = policy.with_features(policy.top(x, attn), x) @ policy.head().T
    seqs = [(table["seq"][r, : table["length"][r]].tolist(), int(table["person"][r])) for r in range(len(table["key"]))]
    out = z.clone()
    for r in range(x.shape[0]):
        for t in range(x.shape[1]):
            ctx = x[r, : t + 1].tolist()
            seen = {int(policy.item_index[v]) for v in ctx if policy.item_index[v] >= 0}
            named = {p for s, p in seqs for j in range(len(ctx) - len(s) + 1) if ctx[j : j + len(s)] == s}
            bonus = NU * b_mat[:, sorted(named)].sum(1)
            bonus[sorted(seen)] += policy.item_repeat
            out[r, t, policy.item_ids] = z[r, t, policy.item_ids] + bonus
    return out


def test_policy_logits_carry_the_people_bonus(setup):
    catalog, policy, tok, names, b_mat, x, attn = setup
    table = PE.name_table(tok, names)
    z = _naive_logits(policy, b_mat, table, x, attn)
    assert (
        z[0, -1, policy.item_ids]
        != (policy.with_features(policy.top(x, attn), x) @ policy.head().T)[0, -1, policy.item_ids]
    ).any()
    logp = torch.log_softmax(z[:, :-1], -1)
    want_lp = logp.gather(-1, x[:, 1:, None]).squeeze(-1)
    want_ent = -(logp.exp() * logp).sum(-1)
    lp, ent, _ = policy.logprobs(x, attn)
    torch.testing.assert_close(lp, want_lp, atol=2e-5, rtol=2e-5)
    torch.testing.assert_close(ent, want_ent, atol=2e-5, rtol=2e-5)
    assert_same_gradients(policy, (lp, ent), (want_lp, want_ent), atol=3e-4, rtol=1e-4)  # fp32 sums in another order
    with torch.no_grad():
        z = z.detach()
        at = torch.zeros_like(x[:, 1:], dtype=torch.bool)
        at[:, -2], at[0, 6] = True, True
        item_lp = policy.logprobs(x, attn, items_at=at)[3]
        torch.testing.assert_close(
            item_lp, torch.log_softmax(z[:, :-1][at][:, policy.item_ids], -1), atol=1e-5, rtol=1e-5
        )
        last = attn.sum(1) - 1
        zl = z[torch.arange(x.shape[0]), last][:, policy.item_ids]
        order = torch.sort(zl, descending=True, stable=True).indices
        assert policy.rank_items(x, attn, k=12).tolist() == order.tolist()
        exclude = torch.tensor([[2, 9], [0, -1], [-1, -1], [3, 4]])
        for row, ex, o in zip(
            policy.rank_items(x, attn, k=6, exclude=exclude).tolist(), exclude.tolist(), order.tolist(), strict=True
        ):
            assert row == [i for i in o if i not in ex][:6]
        logits = next_token_logits(policy, x, attn)
        torch.testing.assert_close(logits, z[torch.arange(x.shape[0]), last], atol=1e-4, rtol=1e-4)


def test_item_fit_queries_carry_the_people_bonus(setup):
    catalog, policy, tok, names, b_mat, x, attn = setup
    ids = catalog.ids()
    prompts = [f"User : hi {names[3]} System :", f"User : {LM.item_token(ids[1])} {names[0]} System :"]
    samples = [Sample(prompts[0], ids[4], []), Sample(prompts[1], ids[2], [ids[1]])]
    cfg = Config.quick(real_data="off")
    data = IF.queries(policy, tok, samples, {i: n for n, i in enumerate(ids)}, cfg)
    with torch.no_grad():
        got = IF.item_logits(policy, data)
        for n, p in enumerate(prompts):
            xp, ap = CO.pad_right([tok(p, add_special_tokens=False)["input_ids"]], tok.pad_token_id)
            z = _naive_logits(policy, b_mat, PE.name_table(tok, names), xp, ap)[0, -1, policy.item_ids]
            torch.testing.assert_close(got[n], z, atol=1e-4, rtol=1e-4)


def test_build_switch_and_errors(setup, tmp_path):
    catalog, policy, tok, names, b_mat, x, attn = setup
    data = CO.prepare_data(Config.quick(real_data="off"), tmp_path)
    off, _ = BU.build_policy(Config.quick(real_data="off"), data)
    on, tok2 = BU.build_policy(Config.quick(real_data="off", people_cues=0.7), data)
    assert off.people is None and on.people is not None
    names2, b2 = PE.item_people(data.catalog)
    torch.testing.assert_close(on.people.w.sum(), 0.7 * b2.sum())
    assert not any(k.startswith("people.") for k in on.state_dict())  # tables are rebuilt, not checkpointed
    with pytest.raises(ValueError, match="people_weight must be finite"):
        PO.Policy(policy.lm, policy.item_ids, people=(PE.name_table(tok, names), b_mat), people_weight=float("nan"))
    with pytest.raises(ValueError, match="B must be a finite"):
        PO.Policy(policy.lm, policy.item_ids, people=(PE.name_table(tok, names), b_mat[:-1]))
    with pytest.raises(ValueError, match="Config.people_cues"):
        Config(people_cues=-0.5)
