"""The item fit: its scores equal the anchor's (and the ranking's) catalog scores, its recall
equals a rank counted by hand (dedup excluding the mentioned items), it learns a learnable
mapping, keeps the best validation epoch (epoch 0, the policy as given, when training only
hurts), touches only the item parts, and does nothing without real data."""

import copy
from types import SimpleNamespace

import pytest
import torch
from helpers import tiny_item_lm

from crs_fast.crs.rlhf import anchor as AN
from crs_fast.crs.rlhf import corpus as CO
from crs_fast.crs.rlhf import item_fit as IF
from crs_fast.crs.rlhf import lm as LM
from crs_fast.crs.rlhf import policy as PO
from crs_fast.crs.rlhf.config import Config
from crs_fast.crs.rlhf.evaluate import Sample

pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def setup():
    catalog, lm, tok, ids = tiny_item_lm()
    gen = torch.Generator().manual_seed(5)
    collab = (torch.randn(12, 3, generator=gen), torch.randn(12, 3, generator=gen))
    policy = PO.Policy(
        lm, ids, train_layers=1, collab=collab, mention_bonus=0.7, item_attrs=[[(i % 3, 1.0)] for i in range(12)]
    )
    with torch.no_grad():
        policy.item_bias.copy_(0.3 * torch.randn(12, generator=gen))
    policy.eval()
    names = catalog.ids()
    items = [LM.item_token(i) for i in names]
    words = ["hi", "like", "User", "System"]
    prompts = []
    for k in range(24):  # distinct contexts, some mentioning items
        w = [words[(k + j) % 4] for j in range(1 + k % 3)]
        ment = [items[(k * 5) % 12]] if k % 2 else []
        prompts.append(f"User : {' '.join(w + ment)} {k % 7 * 'hi '}\nSystem:")
    return policy, tok, catalog, names, prompts


def _cfg(**kw):
    return Config(model="tiny", max_context=64, item_fit_batch=8, **kw)


def _samples(prompts, names, target_of):
    return [
        Sample(p, names[target_of(k)], [names[(k * 5) % 12]] if k % 2 else [], f"d{k}") for k, p in enumerate(prompts)
    ]


def test_item_logits_are_the_catalog_scores(setup):
    policy, tok, catalog, names, prompts = setup
    index = {i: n for n, i in enumerate(names)}
    q = IF.queries(policy, tok, _samples(prompts, names, lambda k: k % 12), index, _cfg(), batch=5)
    seqs = [CO.clip_context(tok, tok(p, add_special_tokens=False)["input_ids"], 64) for p in prompts]
    ids, attn = CO.pad_right(seqs, tok.pad_token_id)
    want = AN.catalog_logprobs(policy, ids, attn)
    got = torch.log_softmax(IF.item_logits(policy, q), -1)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert q.q.shape[0] == len(set(prompts)) and (q.ment >= 0).any()


def test_queries_without_the_forward_are_exact_while_the_rows_hidden_part_is_zero(setup):
    policy0, tok, catalog, names, prompts = setup
    policy = copy.deepcopy(policy0)
    index = {i: n for n, i in enumerate(names)}
    samples = _samples(prompts, names, lambda k: k % 12)
    assert not policy.item_out.any() and not policy.item_attr.weight.any()  # as built: the untrained policy
    full = IF.item_logits(policy, IF.queries(policy, tok, samples, index, _cfg()))
    cheap = IF.queries(policy, tok, samples, index, _cfg(), hidden=False)
    torch.testing.assert_close(IF.item_logits(policy, cheap), full, atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        policy.item_out.normal_()
    full = IF.item_logits(policy, IF.queries(policy, tok, samples, index, _cfg()))
    assert (IF.item_logits(policy, cheap) - full).abs().max() > 1e-2  # rows with a hidden part need it


def test_recall_counts_ranks_and_dedup_excludes_the_mentioned(setup):
    policy, tok, catalog, names, prompts = setup
    index = {i: n for n, i in enumerate(names)}
    samples = _samples(prompts, names, lambda k: (k * 7 + 1) % 12)
    assert all(s.target not in s.mentioned for s in samples)  # as in the dedup protocol's samples
    assert any(s.mentioned for s in samples)
    q = IF.queries(policy, tok, samples, index, _cfg())
    z = IF.item_logits(policy, q)
    for k in (1, 3, 10):
        rank = [(z[i] >= z[i, q.target[i]]).sum() - 1 for i in range(len(samples))]
        assert IF.recall(policy, q, k=k) == pytest.approx(sum(float(r < k) for r in rank) / len(rank))
        ded = []
        for i, s in enumerate(samples):
            row = z[i].clone()
            for m in s.mentioned:
                if index[m] != q.target[i]:
                    row[index[m]] = float("-inf")
            ded.append(float((row >= row[q.target[i]]).sum() - 1 < k))
        assert IF.recall(policy, q, k=k, dedup=True) == pytest.approx(sum(ded) / len(ded))


def test_fit_learns_and_keeps_the_best_epoch_and_only_item_parts(setup):
    policy0, tok, catalog, names, prompts = setup
    policy = copy.deepcopy(policy0)
    index = {i: n for n, i in enumerate(names)}
    target = lambda k: (k * 7 + 1) % 12  # noqa: E731 - a fixed context -> item map: learnable
    train = IF.queries(policy, tok, _samples(prompts, names, target), index, _cfg())
    valid, ded = train, train
    before = IF.recall(policy, valid, k=1)
    frozen = {n: p.detach().clone() for n, p in policy.named_parameters() if not n.startswith(IF.ITEM_PARTS)}
    hist = IF.fit_items(policy, train, valid, ded, _cfg(item_fit_epochs=30, item_fit_lr=3e-2), k=1)
    assert [h["epoch"] for h in hist] == list(range(31))
    assert hist[-1]["train_loss"] < hist[1]["train_loss"]
    chosen = [h for h in hist if h["chosen"]]
    assert len(chosen) == 1 and chosen[0]["valid_score"] == max(h["valid_score"] for h in hist)
    assert chosen[0]["valid_recall@1"] > before + 0.2
    assert IF.recall(policy, valid, k=1) == pytest.approx(chosen[0]["valid_recall@1"])  # the chosen epoch's parameters
    for n, p in policy.named_parameters():
        if n in frozen:
            assert torch.equal(p, frozen[n]), n


def test_fit_keeps_the_policy_as_given_when_training_only_hurts(setup):
    policy0, tok, catalog, names, prompts = setup
    policy = copy.deepcopy(policy0)
    index = {i: n for n, i in enumerate(names)}
    q0 = IF.queries(policy, tok, _samples(prompts, names, lambda k: 0), index, _cfg())
    z0 = IF.item_logits(policy, q0)
    valid_target = torch.argmax(z0, 1)  # the policy's own first choices: valid recall is already 1
    valid = IF.Queries(q0.q, q0.ment, q0.prompt, valid_target, q0.banned.fill_(-1))
    train = IF.queries(policy, tok, _samples(prompts, names, lambda k: (k * 7 + 1) % 12), index, _cfg())
    start = {n: p.detach().clone() for n, p in policy.named_parameters() if n.startswith(IF.ITEM_PARTS)}
    hist = IF.fit_items(policy, train, valid, valid, _cfg(item_fit_epochs=20, item_fit_lr=3e-2), k=1)
    assert hist[0]["chosen"] and hist[0]["valid_recall@1"] == 1.0
    assert min(h["valid_recall@1"] for h in hist[1:]) < 1.0  # training did move away from it
    for n, p in policy.named_parameters():
        if n in start:
            assert torch.equal(p, start[n]), n


def test_fit_on_real_does_nothing_without_real_data_or_epochs(setup):
    policy, tok, catalog, names, prompts = setup
    synth = SimpleNamespace(id="synth-1", turns=[])
    data = SimpleNamespace(train=[synth], real_valid=None, catalog=catalog, dataset="redial")
    assert IF.fit_on_real(policy, tok, data, _cfg(item_fit_epochs=3)) == []
    data = SimpleNamespace(train=[SimpleNamespace(id="d1", turns=[])], real_valid=[], catalog=catalog, dataset="redial")
    assert IF.fit_on_real(policy, tok, data, _cfg(item_fit_epochs=0)) == []


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("item_fit_epochs", -1),
        ("item_fit_lr", 0.0),
        ("item_fit_wd", -0.1),
        ("item_fit_batch", 0),
        ("item_fit_opt", "adam"),
    ],
)
def test_config_rejects_bad_item_fit_settings(key, value):
    with pytest.raises(ValueError, match=key):
        Config(**{key: value})


def test_sft_stage_runs_the_fit_on_real_dialogues_and_logs_each_epoch(tmp_path):
    from crs_fast.crs.rlhf import stages as ST
    from crs_fast.crs.rlhf.run_io import Tracker

    cfg = Config.quick(real_data="off", collab_rank=4, sft_steps=2, item_fit_epochs=2, item_fit_contexts=40)
    data = CO.prepare_data(cfg, tmp_path / "data")
    for d in data.train[:60]:
        d.id = "real-" + d.id  # the pipeline now takes them for real training dialogues
    data.real_valid = data.valid[:20]
    ST.run_sft(cfg, tmp_path, data=data)
    rows = Tracker(tmp_path).rows("item_fit")
    assert [r["step"] for r in rows] == [0, 1, 2]
    assert all(0 <= r["valid_recall@10"] <= 1 and 0 <= r["valid_dedup_recall@10"] <= 1 for r in rows)
    assert rows[1]["train_loss"] > 0
    off = Config.quick(real_data="off", collab_rank=4, sft_steps=2)  # item_fit_epochs 0: nothing logged
    ST.run_sft(off, tmp_path / "off", data=data)
    assert Tracker(tmp_path / "off").rows("item_fit") == []


def test_draw_contexts_keeps_whole_contexts_seeded():
    samples = [Sample(f"p{k % 7}", "x", [], f"d{k}") for k in range(20)]
    got = IF.draw_contexts(samples, 3, seed=0)
    assert len({s.prompt for s in got}) == 3
    assert got == [s for s in samples if s.prompt in {g.prompt for g in got}]  # whole contexts, in order
    assert IF.draw_contexts(samples, 3, seed=0) == got
    assert {s.prompt for s in IF.draw_contexts(samples, 3, seed=1)} != {s.prompt for s in got}
    assert IF.draw_contexts(samples, 0, seed=0) == samples and IF.draw_contexts(samples, 99, seed=0) == samples
