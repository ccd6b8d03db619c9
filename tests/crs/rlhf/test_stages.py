"""The pipeline's stages on the tiny model: SFT and R_phi quality, PPO interrupted and resumed,
DDP over two processes, the quick demo's outputs, and the KL-optimum analysis."""

import dataclasses
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

from crs_fast.crs.rlhf import build as BU
from crs_fast.crs.rlhf import config as CF
from crs_fast.crs.rlhf import corpus as CO
from crs_fast.crs.rlhf import evaluate as EV
from crs_fast.crs.rlhf import run_io as IO
from crs_fast.crs.rlhf import stages as ST


def _copy_stages(src: pathlib.Path, dst: pathlib.Path) -> None:
    for name in ("sft", "rm"):
        shutil.copytree(src / name, dst / name)


def test_sft_lowers_the_loss_and_rm_reports_quality(trained):
    cfg, out, quality = trained
    rows = IO.Tracker(out).rows("sft")
    assert len(rows) == cfg.sft_steps
    first = sum(r["sft_loss"] for r in rows[:10]) / 10
    last = sum(r["sft_loss"] for r in rows[-10:]) / 10
    assert last < 0.8 * first, (first, last)
    assert quality["n_train"] > 50 and quality["n_valid"] > 5
    assert set(quality) >= {"dwell_spearman", "sentiment_spearman", "engagement_auc", "satisfaction_spearman"}
    assert (out / "sft" / "policy.safetensors").exists() and (out / "rm" / "reward_model.safetensors").exists()


def test_sft_run_again_gives_the_same_policy_bit_for_bit(trained, tmp_path):
    """Same configuration, same seed: the same losses and parameters, to the bit (a gradient
    accumulated in a thread-dependent order made two full-recipe runs differ from the 5th step)."""
    from safetensors.torch import load_file

    cfg, out, _ = trained
    ST.run_sft(cfg, tmp_path)
    assert [r["sft_loss"] for r in IO.Tracker(tmp_path).rows("sft")] == [
        r["sft_loss"] for r in IO.Tracker(out).rows("sft")
    ]
    a, b = load_file(out / "sft" / "policy.safetensors"), load_file(tmp_path / "sft" / "policy.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_interrupted_and_resumed_ppo_ends_like_an_uninterrupted_run(trained, tmp_path, encoder):
    cfg, out, _ = trained
    a, b = tmp_path / "a", tmp_path / "b"
    _copy_stages(out, a)
    _copy_stages(out, b)
    full = ST.run_ppo(cfg, a, encoder=encoder)
    with pytest.raises(KeyboardInterrupt):
        ST.run_ppo(cfg, b, encoder=encoder, stop_after=1)  # Ctrl-C after the first iteration
    assert json.loads((b / "ppo" / "checkpoint" / "state.json").read_text())["iteration"] == 1
    # as a crash (no Ctrl-C) after logging iterations past the checkpoint, and between the two
    # renames of a checkpoint swap, would leave it: the resumed run replaces those rows and finds
    # the complete checkpoint under checkpoint.old
    for step in (1, 2):
        IO.Tracker(b).log("ppo", step, {"reward": -99.0, "kl": -99.0})
    os.replace(b / "ppo" / "checkpoint", b / "ppo" / "checkpoint.old")
    resumed = ST.run_ppo(cfg, b, encoder=encoder, resume=True)
    for (name, p), q in zip(full.named_parameters(), resumed.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=name)
    ra, rb = IO.Tracker(a).rows("ppo"), IO.Tracker(b).rows("ppo")
    assert [r["step"] for r in rb] == [0, 1, 2, 3]  # the interrupted run logged 0, the resumed one 1..3
    for x, y in zip(ra, rb, strict=True):
        for key in ("reward", "kl", "value_loss", "policy_loss", "item_loss"):
            assert math.isclose(x[key], y[key], rel_tol=1e-4, abs_tol=1e-6), (key, x[key], y[key])


def test_ppo_with_frozen_rows_keeps_sfts_item_rows(trained, tmp_path, encoder):
    cfg, out, _ = trained
    _copy_stages(out, tmp_path)
    frozen = dataclasses.replace(cfg, ppo_freeze="rows", ppo_iters=1)
    policy = ST.run_ppo(frozen, tmp_path, encoder=encoder)
    _, sft_policy, _ = ST.setup_stage(cfg, tmp_path)
    IO.load_policy(sft_policy, tmp_path / "sft" / "policy.safetensors")
    after, before = dict(policy.named_parameters()), dict(sft_policy.named_parameters())
    rows = [n for n in after if n.startswith(("item_out", "item_attr."))]
    assert rows and all(torch.equal(after[n], before[n]) for n in rows)
    assert not torch.equal(after["item_bias"], before["item_bias"])  # the other item parts still train


def test_ppo_with_frozen_query_keeps_sfts_rankings_exactly(trained, tmp_path, encoder):
    cfg, out, _ = trained
    _copy_stages(out, tmp_path)
    frozen = dataclasses.replace(cfg, ppo_freeze="query", ppo_iters=1)
    policy = ST.run_ppo(frozen, tmp_path, encoder=encoder).eval()
    data, sft_policy, tok = ST.setup_stage(cfg, tmp_path)
    IO.load_policy(sft_policy, tmp_path / "sft" / "policy.safetensors")
    sft_policy.eval()
    after, before = dict(policy.named_parameters()), dict(sft_policy.named_parameters())
    kept = [n for n in after if n.startswith(BU.FROZEN["query"])]
    assert any(n.startswith(BU.TRUNK_PARTS) for n in kept) and any(n.startswith("item_") for n in kept)
    assert all(torch.equal(after[n], before[n]) for n in kept)
    moved = [n for n in after if not torch.equal(after[n], before[n])]
    assert moved and all(not n.startswith(BU.FROZEN["query"]) for n in moved)  # the heads trained
    prompts = [CO.prompt(d.turns[:i], data.catalog) for d in data.train[:6] for i in (1, 3)]
    assert EV.top_lists(policy, tok, prompts, 20, cfg) == EV.top_lists(sft_policy, tok, prompts, 20, cfg)
    reuse = EV.RankingReuse()  # what the evaluation relies on to rank once for both
    reuse.store_for("sft", sft_policy)
    assert reuse.store_for("ppo", policy)[1] == "sft"


def test_two_process_ddp_step_keeps_ranks_identical(trained, tmp_path, small):
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
        "crs_fast.crs.rlhf.ddp_check",
        str(work),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    p0, p1 = torch.load(work / "params_rank0.pt"), torch.load(work / "params_rank1.pt")
    assert torch.equal(p0, p1)
    cfg = CF.Config.quick(**small)
    _, sft_policy, _ = ST.setup_stage(cfg, work)
    IO.load_policy(sft_policy, work / "sft" / "policy.safetensors")
    before = torch.cat([p.detach().flatten() for p in sft_policy.parameters()])
    assert not torch.equal(before, p0), "the PPO step changed nothing"


@pytest.mark.parametrize("dataset", ["redial", "opendialkg"])
def test_quick_demo_writes_metrics_table_and_plots(tmp_path, dataset):
    """The quick pipeline end to end; under CI on the real dataset (ReDial, then OpenDialKG), elsewhere
    on generated data (once: without real data both datasets are the same run)."""
    from crs_fast.cli import main

    real = os.environ.get("CI") is not None
    if real:
        real_data_dir()
    elif dataset != "redial":
        pytest.skip("without real data the OpenDialKG run is the generated-data run; CI runs it on OpenDialKG")
    out = tmp_path / "demo"
    args = ["demo", "--quick", "--out", str(out), "--set", f"dataset={dataset!r}"]
    args += [] if real else ["--real-data", "off"]
    assert main(args) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    for name in ("base", "sft", "ppo"):
        assert set(metrics[name]) == {"recall@10", "ndcg@10", "kl", "coherence", "satisfaction"}
        assert all(math.isfinite(v) for v in metrics[name].values())
        assert 0 <= metrics[name]["recall@10"] <= 1
    assert 0 < metrics["ppo"]["kl"] < 200
    result = json.loads((out / "eval.json").read_text())
    assert set(result["ppo_vs_sft"]) == {"satisfaction", "accepted", "rphi_reward", "coherence", "recall@10"}
    # the paired differences are of the per-user values whose means eval.json reports
    reported_as = {"satisfaction": "satisfaction", "accepted": "accept_rate", "rphi_reward": "rphi_reward"}
    for key, reported in reported_as.items():
        d = result["ppo_vs_sft"][key]
        mine = result["ppo"]["synthetic"][reported] - result["sft"]["synthetic"][reported]
        assert d["diff"] == pytest.approx(mine, abs=1e-9) and d["lo"] <= d["diff"] <= d["hi"], key
    coh = result["ppo_vs_sft"]["coherence"]  # the mean over users of each user's mean over turns
    assert -2 <= coh["lo"] <= coh["diff"] <= coh["hi"] <= 2
    assert set(result["baselines"]) == {"popularity", "repeat", "cooccurrence", "content"}
    assert result["baselines"]["repeat"]["synthetic"]["dedup"]["recall@50"] == 0.0  # zero by construction
    assert set(result["vs_baselines"]) == {"base", "sft", "ppo"}  # every policy's intervals, not only PPO's
    for name in ("base", "sft", "ppo"):
        v = result["vs_baselines"][name]["synthetic"]["dedup"]["best"]["recall@10"]
        assert v["lo"] <= v["diff"] <= v["hi"] and v["baseline"] in result["baselines"]
    if real:
        assert result["real_data"] and result["dataset"] == dataset and dataset in result["ppo"]
        assert set(result["ppo"][dataset]["dedup"]) >= {"recall@1", "recall@10", "recall@50", "n"}
        assert result["ppo"][f"{dataset}_valid"]["standard"]["n"] > 0  # the validation figures beside
        diffs = result[f"{dataset}_ppo_vs_sft"]
        assert set(diffs) == {"recall@1", "recall@10", "recall@50"}
        assert all(d["lo"] <= d["diff"] <= d["hi"] and d["groups"] > 1 for d in diffs.values())
        for name, by_set in result["baselines"].items():  # the baselines ranked the same samples
            assert by_set[dataset]["standard"]["n"] == result["ppo"][dataset]["standard"]["n"], name
        best = result["ppo_vs_baselines"][dataset]["dedup"]["best"]["recall@10"]
        assert best["baseline"] in result["baselines"] and best["lo"] <= best["diff"] <= best["hi"]
        assert result["vs_baselines"]["ppo"] == result["ppo_vs_baselines"]
        for name in ("base", "sft"):
            v = result["vs_baselines"][name][dataset]["standard"]["best"]["recall@10"]
            mine = result[name][dataset]["standard"]["recall@10"]
            theirs = result["baselines"][v["baseline"]][dataset]["standard"]["recall@10"]
            assert v["diff"] == pytest.approx(mine - theirs, abs=1e-9) and v["lo"] <= v["diff"] <= v["hi"]
        # `crs-fast eval --<dataset>-test FILE`: the run re-evaluated on another file in the original
        # format (here the first 40 records of the data directory's test file, copied at run time)
        source = real_data_dir() / dataset / ("test_data.jsonl" if dataset == "redial" else "test.jsonl")
        part = tmp_path / "part.jsonl"
        part.write_text("".join(source.read_text().splitlines(keepends=True)[:40]))
        args = ["eval", "--quick", "--out", str(out), "--set", f"dataset={dataset!r}", "--set", "eval_users=8"]
        assert main([*args, f"--{dataset}-test", str(part)]) == 0  # 8 synthetic users: the file is what is tested
        again = json.loads((out / "eval.json").read_text())
        n = again["ppo"][dataset]["standard"]["n"]
        assert 0 < n < result["ppo"][dataset]["standard"]["n"]  # the file's samples, not the test set's
        assert again["baselines"]["cooccurrence"][dataset]["standard"]["n"] == n
    assert result["ppo_vs_sft"]["recall@10"]["groups"] == 64  # the quick run's held-out users, resampled whole
    assert (out / "plots" / "ppo.png").stat().st_size > 1000
    assert (out / "plots" / "eval.png").stat().st_size > 1000
    report = (out / "report.md").read_text()
    assert "UniCRS (published)" in report and "(baseline)" in report
    assert "PPO - SFT, offline R_phi reward per turn (the proxy PPO maximises)" in report
    for link in ("plots/eval.png", "plots/ppo.png"):  # the report links the plots the run drew
        assert f"]({link})" in report and (out / link).exists()


def test_kl_optimum_moves_from_the_policy_towards_r_phi(trained, encoder):
    from crs_fast.crs.rlhf.analysis import kl_optimum

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
