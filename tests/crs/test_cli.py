"""The CLI and run files fed what a user gets wrong: every mistake is a one-line message naming
the argument or file, never a traceback, and nothing is written before the check."""

import json

import pytest

from crs_fast.cli import main
from crs_fast.crs.rlhf import run_io as IO


@pytest.mark.parametrize("key,value", [("seed", "3"), ("model", "'tiny'"), ("real_data", "'off'")])
def test_set_takes_the_keys_that_have_flags(key, value, tmp_path, monkeypatch):
    """Issue 16: --set seed=3 / model=... / real_data=... failed with 'multiple values'."""
    from crs_fast.crs.rlhf import cli as rlhf_cli

    seen = {}
    monkeypatch.setattr(rlhf_cli, "run", lambda args: seen.setdefault("cfg", rlhf_cli._config(args)) and 0)
    assert main(["demo", "--quick", "--out", str(tmp_path), "--set", f"{key}={value}"]) == 0
    assert getattr(seen["cfg"], key) == eval(value)  # noqa: S307 - a literal


def test_flag_and_set_of_one_key_conflict(tmp_path):
    with pytest.raises(SystemExit, match="seed given twice"):
        main(["demo", "--quick", "--out", str(tmp_path), "--seed", "2", "--set", "seed=3"])


@pytest.mark.parametrize(
    "setting,message",
    [
        ("clip=1.5", r"Config.clip: expected a value in \(0, 1\]"),
        ("ppo_lr=1e999", "Config.ppo_lr: expected a finite number"),
        ("rm_lr=float('nan')", "Config.rm_lr"),
        ("=3", "--set expects KEY=VALUE"),
    ],
)
def test_bad_values_fail_at_once(setting, message, tmp_path):
    with pytest.raises(SystemExit, match=message):
        main(["demo", "--quick", "--out", str(tmp_path / "run"), "--set", setting])
    assert not (tmp_path / "run").exists()


def test_bad_config_files(tmp_path):
    with pytest.raises(SystemExit, match=r"config file .*missing\.toml not found"):
        main(["demo", "--quick", "--config", str(tmp_path / "missing.toml")])
    with pytest.raises(SystemExit, match="is a directory"):
        main(["demo", "--quick", "--config", str(tmp_path)])
    bad = tmp_path / "bad.toml"
    bad.write_text("ppo_iters = [\n")
    with pytest.raises(SystemExit, match=r"config file .*bad\.toml: invalid TOML"):
        main(["demo", "--quick", "--config", str(bad)])
    bad.write_text("ppo_lr = inf\n")
    with pytest.raises(SystemExit, match="Config.ppo_lr: expected a finite number"):
        main(["demo", "--quick", "--config", str(bad)])


def test_data_commands_on_bad_files(tmp_path):
    binary = tmp_path / "x.jsonl"
    binary.write_bytes(bytes(range(128, 256)) + bytes(range(128)))
    with pytest.raises(SystemExit, match=r"crs-fast data stats: .*x\.jsonl:1: invalid UTF-8"):
        main(["data", "stats", str(binary)])
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(SystemExit, match="unknown format"):
        main(["data", "stats", str(tmp_path / "notes.txt")])
    with pytest.raises(SystemExit, match="is a directory"):
        main(["data", "synth", "--users", "2", "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="cannot write"):
        main(["data", "synth", "--users", "2", "--out", str(tmp_path / "no" / "such" / "dir.jsonl")])


def test_eval_without_a_run_writes_nothing(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["eval", "--quick", "--out", str(out)]) == 2
    assert "reward_model.safetensors not found" in capsys.readouterr().err
    assert not out.exists()


def test_bench_forwards_its_options_in_order(tmp_path, monkeypatch):
    """Issue 16: `crs-fast bench --quick --out DIR --name X` failed ('--out: expected one argument')."""
    import crs_fast.benchmarks.run as run

    got = {}
    monkeypatch.setattr(run, "main", lambda argv: got.setdefault("argv", argv) and 0)
    argv = ["--quick", "--out", str(tmp_path), "--name", "X"]
    assert main(["bench", *argv]) == 0
    assert got["argv"] == argv


def test_metrics_with_a_torn_final_line(tmp_path, capsys):
    """A crash in the middle of a write leaves half a line: reading drops it and says so."""
    t = IO.Tracker(tmp_path)
    t.log("ppo", 0, {"reward": 1.0})
    t.log("ppo", 1, {"reward": 2.0})
    with open(t.path, "a", encoding="utf-8") as f:
        f.write('{"stage": "ppo", "step": 2, "rew')
    assert [r["step"] for r in t.rows("ppo")] == [0, 1]
    assert "dropped a torn final line" in capsys.readouterr().err
    assert all(json.loads(x) for x in t.path.read_text().splitlines())
    assert t.drop("ppo", 1) == 1 and [r["step"] for r in t.rows("ppo")] == [0]
    with open(t.path, "a", encoding="utf-8") as f:
        f.write("not json\n")
    t.log("ppo", 5, {"reward": 0.0})
    with pytest.raises(ValueError, match=r"metrics\.jsonl:2: malformed metrics row"):
        t.rows("ppo")
