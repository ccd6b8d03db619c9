"""A run's files: checkpoints swapped atomically, the metrics tracker."""

import json
import os

import pytest
import torch

from crs_fast.crs.rlhf import run_io as IO


def test_checkpoint_swap_keeps_a_complete_checkpoint(tmp_path, monkeypatch):
    ckpt = tmp_path / "checkpoint"
    assert IO.latest_checkpoint(ckpt) is None
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    IO.save_checkpoint(ckpt, model, opt, {"iteration": 1, "beta": 0.1})
    assert IO.latest_checkpoint(ckpt) == ckpt
    assert not (tmp_path / "checkpoint.tmp").exists() and not (tmp_path / "checkpoint.old").exists()

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", fail)  # a failure while the next checkpoint is written
    with pytest.raises(OSError, match="disk full"):
        IO.save_checkpoint(ckpt, model, opt, {"iteration": 2, "beta": 0.2})
    monkeypatch.undo()
    assert IO.latest_checkpoint(ckpt) == ckpt
    assert json.loads((ckpt / "state.json").read_text())["iteration"] == 1
    (tmp_path / "incomplete").mkdir()  # no state.json: never taken for a checkpoint
    os.replace(ckpt, tmp_path / "checkpoint.old")
    assert IO.latest_checkpoint(ckpt) == tmp_path / "checkpoint.old"
    assert IO.latest_checkpoint(tmp_path / "incomplete") is None


def test_tracker_drop_replaces_rows_from_a_step_on(tmp_path):
    t = IO.Tracker(tmp_path)
    assert t.drop("ppo", 0) == 0
    for step in range(4):
        t.log("ppo", step, {"reward": float(step)})
    t.log("sft", 7, {"sft_loss": 1.0})
    assert t.drop("ppo", 2) == 2
    assert [r["step"] for r in t.rows("ppo")] == [0, 1] and [r["step"] for r in t.rows("sft")] == [7]
    assert t.drop("ppo", 0) == 2 and t.rows("ppo") == [] and len(t.rows("sft")) == 1
