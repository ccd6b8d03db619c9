"""A run's files: the metrics tracker (``metrics.jsonl``, TensorBoard when installed), progress
bars, atomic saves, policy and R_phi weights, and the PPO checkpoint that ``--resume`` reads."""

from __future__ import annotations

import json
import math
import os
import pathlib
import shutil
import sys
import time
from contextlib import contextmanager
from typing import Any

import torch

from .build import build_policy
from .config import Config
from .corpus import CRSData, prepare_data
from .online_rm import OnlineRM
from .reward import RewardModel

# The settings that shape the policy a run's stages rebuild and load weights into: a later stage
# with other values would load SFT's or PPO's weights into a different model, silently.
POLICY_KEYS = (
    "model",
    "dataset",
    "real_data",
    "seed",
    "catalog_items",
    "synthetic_users",
    "redial_train_max",
    "item_features",
    "collab_rank",
    "collab_weight",
    "collab_norm",
    "item_prior",
    "mention_bonus",
    "collab_decay",
    "genre_cues",
    "people_cues",
    "knn_weight",
    "knn_k",
    "knn_tau",
    "knn_turns",
    "lora_r",
    "train_layers",
)


class RunMismatch(ValueError):
    """A stage's configuration differs from the run's (``policy_config.json``) in a key of
    :data:`POLICY_KEYS`."""


def check_run(cfg, out: pathlib.Path, *, record: bool = False) -> None:
    """With ``record`` (SFT, the stage that starts a run), write ``out/policy_config.json``: the
    values of :data:`POLICY_KEYS`. Otherwise compare with it, when present, and raise
    :class:`RunMismatch` naming every key that differs (the run's value and this command's)."""
    path = out / "policy_config.json"
    mine = {k: getattr(cfg, k) for k in POLICY_KEYS}
    if record:
        out.mkdir(parents=True, exist_ok=True)
        save_atomic(lambda p: p.write_text(json.dumps(mine, indent=1)), path)
        return
    if not path.exists():  # a run from before the record, or stages run out of order
        return
    try:
        theirs = json.loads(path.read_text())
        if not isinstance(theirs, dict):
            raise ValueError("not a JSON object")
    except (ValueError, UnicodeDecodeError) as exc:
        raise RunMismatch(f"{path} cannot be read ({exc}); start a new run with crs-fast sft") from None
    diff = [f"{k}={theirs[k]!r} (this command: {mine[k]!r})" for k in mine if k in theirs and theirs[k] != mine[k]]
    if diff:
        raise RunMismatch(
            f"{out} was started (crs-fast sft) with {', '.join(diff)}; pass the run's settings "
            "(its --config / --set) or start a new run with crs-fast sft"
        )


class Tracker:
    """metrics.jsonl (append; one object per call) and TensorBoard when available."""

    def __init__(self, out: pathlib.Path) -> None:
        self.path = out / "metrics.jsonl"
        out.mkdir(parents=True, exist_ok=True)
        self.tb = None
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(out / "tensorboard"))
        except Exception:  # noqa: BLE001 - TensorBoard is optional
            self.tb = None

    def log(self, stage: str, step: int, values: dict[str, Any]) -> None:
        row = {"stage": stage, "step": step, "time": time.time(), **values}
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
        if self.tb is not None:
            for k, v in values.items():
                if isinstance(v, int | float) and math.isfinite(v):
                    self.tb.add_scalar(f"{stage}/{k}", v, step)

    def drop(self, stage: str, from_step: int) -> int:
        """Remove the ``stage`` rows with ``step >= from_step`` (rewritten atomically): a rerun, or
        a resume from a checkpoint older than the last logged iteration, replaces them instead of
        logging them twice. Returns how many were removed."""
        rows = self._read()
        keep = [r for r in rows if not (r["stage"] == stage and r["step"] >= from_step)]
        if len(keep) != len(rows):
            text = "".join(json.dumps(r) + "\n" for r in keep)
            save_atomic(lambda p: p.write_text(text, encoding="utf-8"), self.path)
        return len(rows) - len(keep)

    def rows(self, stage: str) -> list[dict]:
        """The logged rows of ``stage``, in order."""
        return [r for r in self._read() if r["stage"] == stage]

    def _read(self) -> list[dict]:
        """Every row. A torn final line (a crash in the middle of a write) is dropped from the file,
        with a message; a malformed line elsewhere raises ValueError naming it."""
        if not self.path.exists():
            return []
        lines = self.path.read_text(encoding="utf-8", errors="replace").splitlines()
        rows = []
        for i, line in enumerate(lines, 1):
            try:
                row = json.loads(line)
                if not isinstance(row, dict) or "stage" not in row or "step" not in row:
                    raise ValueError("not a metrics row")
            except ValueError as exc:
                if i < len(lines):
                    raise ValueError(f"{self.path}:{i}: malformed metrics row ({exc})") from None
                print(f"{self.path}:{i}: dropped a torn final line (a crash in the middle of a write)", file=sys.stderr)
                kept = "".join(x + "\n" for x in lines[:-1])
                save_atomic(lambda p, kept=kept: p.write_text(kept, encoding="utf-8"), self.path)
                break
            rows.append(row)
        return rows


@contextmanager
def progress_bar(total: int, label: str):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn(label),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[info]}"),
        transient=False,
        disable=os.environ.get("CRS_FAST_NO_PROGRESS") == "1",
    ) as p:
        task = p.add_task(label, total=total, info="")

        def advance(info: str = "", completed: int | None = None) -> None:
            if completed is None:
                p.advance(task)
            else:
                p.update(task, completed=completed)
            p.update(task, info=info)

        yield advance


def save_atomic(obj_writer, path: pathlib.Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    obj_writer(tmp)
    os.replace(tmp, path)


def save_policy(policy, path: pathlib.Path) -> None:
    """The policy's weights (LM with item tokens, value head) as safetensors, atomically."""
    from safetensors.torch import save_model

    path.parent.mkdir(parents=True, exist_ok=True)
    save_atomic(lambda p: save_model(policy, str(p)), path)


def load_policy(policy, path: pathlib.Path) -> None:
    from safetensors.torch import load_model

    if not path.exists():
        raise FileNotFoundError(f"{path} not found: run the stage that writes it first")
    load_model(policy, str(path))


def default_device() -> torch.device:
    """The accelerator when there is one (SFT and evaluation; PPO places through Accelerate)."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def latest_checkpoint(ckpt: pathlib.Path) -> pathlib.Path | None:
    """The complete checkpoint to resume from: ``ckpt`` itself, or ``ckpt.old`` where a crash came
    between :func:`save_checkpoint`'s two renames (``state.json`` is written last, so a directory
    holding it is complete); None when there is neither."""
    for d in (ckpt, ckpt.with_name(ckpt.name + ".old")):
        if (d / "state.json").exists():
            return d
    return None


def save_checkpoint(ckpt: pathlib.Path, policy, opt, state: dict, online: OnlineRM | None = None) -> None:
    """Write the checkpoint into ``ckpt.tmp``, then swap it in by renames: at every moment a
    complete checkpoint exists under ``ckpt`` or ``ckpt.old`` (:func:`latest_checkpoint`)."""
    from safetensors.torch import save_model

    tmp = ckpt.with_name(ckpt.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_model(policy, str(tmp / "policy.safetensors"))
    torch.save(opt.state_dict(), tmp / "optimizer.pt")
    if online is not None:  # R_phi as refit so far, its data and optimizer
        online.save(tmp)
    (tmp / "state.json").write_text(json.dumps(state))
    old = ckpt.with_name(ckpt.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if ckpt.exists():
        os.replace(ckpt, old)
    os.replace(tmp, ckpt)
    shutil.rmtree(old, ignore_errors=True)


def reward_model_path(out: pathlib.Path) -> pathlib.Path:
    """R_phi's weights in a run directory; FileNotFoundError (one line) when the stage has not run."""
    path = out / "rm" / "reward_model.safetensors"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: run `crs-fast train-rm` first")
    return path


def load_reward_model(out: pathlib.Path, dim: int) -> RewardModel:
    from safetensors.torch import load_model

    rm = RewardModel(dim=dim)
    load_model(rm, str(reward_model_path(out)))
    return rm.eval()


def setup_stage(cfg: Config, out: pathlib.Path, data: CRSData | None = None, *, start: bool = False):
    """(data, base policy, tokenizer); ``data`` prepared here unless given (stages run by the
    demo share one preparation). ``start`` (SFT) records the run's policy settings, else they are checked."""
    check_run(cfg, out, record=start)
    data = data or prepare_data(cfg, out / "data")
    policy, tok = build_policy(cfg, data)
    return data, policy, tok
