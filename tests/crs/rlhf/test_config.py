"""The run configuration: unknown keys, types and ranges, TOML, and the CLI's one-line errors."""

import dataclasses
import pathlib

import pytest

from crs_fast.crs.rlhf import config as CF


def test_config_rejects_unknown_keys_and_reads_toml(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('model = "tiny"\nppo_iters = 3\n')
    cfg = CF.Config.load(path, seed=5)
    assert cfg.model == "tiny" and cfg.ppo_iters == 3 and cfg.seed == 5
    path.write_text("ppo_iterz = 3\n")
    with pytest.raises(ValueError, match="unknown configuration keys \\['ppo_iterz'\\]"):
        CF.Config.load(path)


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
        ({"dataset": "movielens"}, ValueError, "Config.dataset: expected 'redial' or 'opendialkg'"),
    ],
)
def test_config_checks_types_and_ranges(bad, error, message):
    with pytest.raises(error, match=message):
        CF.Config(**bad)


def test_config_takes_ints_for_floats_and_none_or_zero_kl_target():
    cfg = CF.Config(item_pg=3, ppo_lr=1, kl_target=None)
    assert isinstance(cfg.item_pg, float) and cfg.item_pg == 3.0 and isinstance(cfg.ppo_lr, float)
    assert CF.Config(kl_target=0).kl_target == 0.0
    assert CF.Config(**CF.Config.quick().as_dict()) == CF.Config.quick()


def test_cli_reports_a_bad_config_value_without_a_traceback(tmp_path, capsys):
    from crs_fast.cli import main

    with pytest.raises(SystemExit, match="crs-fast demo: Config.ppo_epochs: expected int, got 'abc'"):
        main(["demo", "--quick", "--out", str(tmp_path), "--set", "ppo_epochs=abc"])
    (tmp_path / "c.toml").write_text("clip = 0\n")
    with pytest.raises(SystemExit, match="crs-fast ppo: Config.clip: expected > 0"):
        main(["ppo", "--out", str(tmp_path), "--config", str(tmp_path / "c.toml")])
    assert not (tmp_path / "sft").exists()


def test_dataset_tables_and_both(tmp_path):
    f = tmp_path / "full.toml"
    f.write_text(
        'dataset = "both"\nsft_steps = 7\n[opendialkg]\ncollab_rank = 512\nsft_steps = 9\n[redial]\nppo_iters = 3\n'
    )
    each = CF.Config.load_each(f)
    assert [c.dataset for c in each] == ["redial", "opendialkg"]
    # ReDial's rank is its tuned one: the file's [opendialkg] table does not reach it
    assert (each[0].collab_rank, each[0].sft_steps, each[0].ppo_iters) == (CF.TUNED["redial"]["collab_rank"], 7, 3)
    assert (each[1].collab_rank, each[1].sft_steps, each[1].ppo_iters) == (512, 9, 20)
    one = CF.Config.load(f, dataset="opendialkg", sft_steps=2)  # flags beat the file's table
    assert (one.collab_rank, one.sft_steps) == (512, 2)
    assert [c.dataset for c in CF.Config.load_each(f, dataset="redial")] == ["redial"]
    with pytest.raises(ValueError, match="'both' runs each in turn, in `crs-fast demo` only"):
        CF.Config.load(f)
    bad = tmp_path / "bad.toml"
    bad.write_text("[movielens]\nsft_steps = 1\n")
    with pytest.raises(ValueError, match=r"unknown tables \['movielens'\]"):
        CF.Config.load(bad)
    bad.write_text("[redial]\nsft_stepz = 1\n")
    with pytest.raises(ValueError, match=r"unknown configuration keys \['sft_stepz'\]"):
        CF.Config.load(bad)


def test_headline_table_lists_every_recommender_and_the_intervals():
    from crs_fast.crs.rlhf.report import headline

    m = {
        "standard": {"recall@1": 0.01, "recall@10": 0.2, "recall@50": 0.3},
        "dedup": {"recall@1": 0.02, "recall@10": 0.25, "recall@50": 0.35},
    }
    diff = {"baseline": "cooccurrence", "diff": 0.031, "lo": 0.004, "hi": 0.058, "groups": 294}
    r = {
        "sft": {"opendialkg": m},
        "ppo": {"opendialkg": m, "opendialkg_valid": {"standard": {"recall@10": 0.123}}},
        "baselines": {"cooccurrence": {"opendialkg": m}},
        "ppo_vs_baselines": {"opendialkg": {"dedup": {"best": {"recall@10": diff}}}},
        "opendialkg_ppo_vs_sft": {"recall@10": {"diff": 0.01, "lo": -0.002, "hi": 0.02}},
    }
    text = headline({"opendialkg": r})
    assert "## OpenDialKG test" in text and "| ppo | 0.010 / 0.200 / 0.300 | 0.020 / 0.250 / 0.350 | 0.123 |" in text
    assert "| cooccurrence (baseline) |" in text
    assert (
        "PPO - best baseline (cooccurrence), dedup Recall@10: +0.031 (95% CI +0.004 .. +0.058, 294 dialogues)" in text
    )
    assert "PPO - SFT, standard Recall@10: +0.010 (95% CI -0.002 .. +0.020)" in text


def test_demo_with_both_datasets_runs_each_and_writes_the_headline(tmp_path, monkeypatch):
    from crs_fast.cli import main
    from crs_fast.crs.rlhf import cli as CLI

    calls = []

    def fake_demo(cfg, out, *, quick=False):
        calls.append((cfg.dataset, cfg.collab_rank, out.name, quick))
        m = {k: {"recall@1": 0.0, "recall@10": 0.1, "recall@50": 0.2} for k in ("standard", "dedup")}
        return {"ppo": {cfg.dataset: m}}

    monkeypatch.setattr(CLI, "run_demo", fake_demo)
    f = tmp_path / "full.toml"
    f.write_text('dataset = "both"\n[opendialkg]\ncollab_rank = 512\n')
    assert main(["demo", "--quick", "--config", str(f), "--out", str(tmp_path / "runs")]) == 0
    assert calls == [("redial", 64, "redial", True), ("opendialkg", 512, "opendialkg", True)]
    text = (tmp_path / "runs" / "headline.md").read_text()
    assert "## ReDial test" in text and "## OpenDialKG test" in text and "| ppo | 0.000 / 0.100 / 0.200 |" in text
    with pytest.raises(SystemExit, match="'both' runs each in turn"):
        main(["sft", "--quick", "--config", str(f), "--out", str(tmp_path / "x")])


def test_load_applies_the_tuned_settings_of_the_dataset_under_the_file_and_flags(tmp_path):
    for dataset, tuned in CF.TUNED.items():
        cfg = CF.Config.load(None, dataset=dataset)
        assert {k: getattr(cfg, k) for k in tuned} == tuned
        assert tuned != {k: getattr(CF.Config(dataset=dataset), k) for k in tuned}  # not Config's defaults
        quick = CF.Config.load(None, quick=True, dataset=dataset)  # the tiny model's check: plain defaults
        assert {k: getattr(quick, k) for k in tuned} == {k: getattr(CF.Config.quick(), k) for k in tuned}
    f = tmp_path / "c.toml"
    f.write_text("people_cues = 0.5\n[redial]\ncollab_decay = 0.9\n[opendialkg]\ncollab_rank = 32\n")
    red = CF.Config.load(f)
    assert (red.people_cues, red.collab_decay, red.genre_cues) == (0.5, 0.9, CF.TUNED["redial"]["genre_cues"])
    odkg = CF.Config.load(f, dataset="opendialkg", people_cues=2.0)  # flags beat the file and TUNED
    assert (odkg.people_cues, odkg.collab_rank, odkg.item_prior) == (2.0, 32, CF.TUNED["opendialkg"]["item_prior"])
    assert set().union(*CF.TUNED.values()) <= {f.name for f in dataclasses.fields(CF.Config)}


def test_the_committed_config_files_load():
    root = pathlib.Path(__file__).resolve().parents[3] / "configs"
    files = sorted(root.glob("*.toml"))
    assert {f.name for f in files} >= {"demo.toml", "full.toml", "opendialkg.toml"}
    for f in files:
        for cfg in CF.Config.load_each(f):
            assert cfg.dataset in CF.DATASETS
    demo, full = CF.Config.load(root / "demo.toml"), CF.Config.load_each(root / "full.toml")
    assert [c.dataset for c in full] == list(CF.DATASETS) and all(c.redial_eval_max == 0 for c in full)
    assert demo.sft_steps < full[0].sft_steps and demo.ppo_iters < full[0].ppo_iters  # the demo is the smaller run


def test_later_stages_refuse_a_run_started_with_other_policy_settings(tmp_path, capsys):
    from crs_fast.cli import main
    from crs_fast.crs.rlhf import run_io as RI

    cfg = CF.Config.quick(real_data="off")
    RI.check_run(cfg, tmp_path, record=True)
    RI.check_run(cfg, tmp_path)  # the same settings pass
    RI.check_run(dataclasses.replace(cfg, ppo_iters=3, sft_lr=1.0), tmp_path)  # training-only keys may differ
    with pytest.raises(RI.RunMismatch, match=r"collab_norm=0.0 \(this command: 0.5\)"):
        RI.check_run(dataclasses.replace(cfg, collab_norm=0.5), tmp_path)
    assert main(["ppo", "--quick", "--real-data", "off", "--out", str(tmp_path), "--set", "people_cues=1.0"]) == 2
    err = capsys.readouterr().err
    assert "people_cues=0.0 (this command: 1.0)" in err and "start a new run with crs-fast sft" in err
    assert not (tmp_path / "ppo").exists() and not (tmp_path / "data").exists()  # refused before any work
    RI.check_run(dataclasses.replace(cfg, collab_norm=0.5), tmp_path / "old")  # no record: nothing to compare
    RI.check_run(dataclasses.replace(cfg, collab_norm=0.5), tmp_path, record=True)  # SFT starts the run anew
    RI.check_run(dataclasses.replace(cfg, collab_norm=0.5), tmp_path)
    for bad in ("{not json", "[1, 2]", ""):  # a damaged record is named, not a traceback
        (tmp_path / "policy_config.json").write_text(bad)
        with pytest.raises(RI.RunMismatch, match="policy_config.json cannot be read"):
            RI.check_run(cfg, tmp_path)
