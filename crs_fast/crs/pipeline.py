"""The RLHF pipeline's stages as commands: ``crs-fast sft | train-rm | ppo | eval | demo``.

Everything a stage writes goes under ``--out DIR``: ``sft/policy.safetensors``,
``rm/reward_model.safetensors`` and ``rm/quality.json`` (and ``rm/item_encodings.safetensors``, the
catalog's sentence embeddings, cached by ``ppo``), ``ppo/checkpoint/`` (written atomically
every ``save_every`` iterations and on Ctrl-C; ``--resume`` continues from it), ``metrics.jsonl``
(one JSON object per step or iteration, with its stage), ``eval.json`` and ``report.md`` (the
comparison table), and ``plots/*.png``. TensorBoard event files too when ``tensorboard`` is
installed. Models are rebuilt from the configuration and data (deterministic), then loaded.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import shutil
import sys
import time
from collections.abc import Sequence
from contextlib import contextmanager
from typing import Any

import torch

from . import evaluate as E
from . import rlhf as R

PUBLISHED = {  # ../shared/data/README.md: Recall@1/10/50 on ReDial
    "KBRD": (0.030, 0.163, 0.338),
    "KGSF": (0.039, 0.183, 0.378),
    "UniCRS": (0.051, 0.224, 0.428),
    "UniCRS (dedup)": (0.024, 0.180, 0.335),
}


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
            _save_atomic(lambda p: p.write_text(text, encoding="utf-8"), self.path)
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
                _save_atomic(lambda p, kept=kept: p.write_text(kept, encoding="utf-8"), self.path)
                break
            rows.append(row)
        return rows


@contextmanager
def _progress(total: int, label: str):
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


def _save_atomic(obj_writer, path: pathlib.Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    obj_writer(tmp)
    os.replace(tmp, path)


def save_policy(policy, path: pathlib.Path) -> None:
    """The policy's weights (LM with item tokens, value head) as safetensors, atomically."""
    from safetensors.torch import save_model

    path.parent.mkdir(parents=True, exist_ok=True)
    _save_atomic(lambda p: save_model(policy, str(p)), path)


def load_policy(policy, path: pathlib.Path) -> None:
    from safetensors.torch import load_model

    if not path.exists():
        raise FileNotFoundError(f"{path} not found: run the stage that writes it first")
    load_model(policy, str(path))


def _device() -> torch.device:
    """The accelerator when there is one (SFT and evaluation; PPO places through Accelerate)."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _setup(cfg: R.Config, out: pathlib.Path, data: R.CRSData | None = None):
    """(data, base policy, tokenizer); ``data`` prepared here unless given (stages run by the
    demo share one preparation)."""
    data = data or R.prepare_data(cfg, out / "data")
    policy, tok = R.build_policy(cfg, data)
    return data, policy, tok


# --------------------------------------------------------------------------------------------- stages


def run_sft(cfg: R.Config, out: pathlib.Path, *, data: R.CRSData | None = None) -> pathlib.Path:
    """SFT from the base model; writes ``sft/policy.safetensors``."""
    data, policy, tok = _setup(cfg, out, data)
    policy.to(_device())
    tracker = Tracker(out)
    with _progress(cfg.sft_steps, "SFT") as advance:
        R.sft(
            policy,
            tok,
            data,
            cfg,
            progress=lambda s, row: (tracker.log("sft", s, row), advance(f"loss {row['sft_loss']:.3f}")),
        )
    path = out / "sft" / "policy.safetensors"
    save_policy(policy, path)
    return path


def run_train_rm(cfg: R.Config, out: pathlib.Path, encoder=None, *, data: R.CRSData | None = None) -> dict:
    """Train R_phi on the weak labels; writes ``rm/reward_model.safetensors`` and ``rm/quality.json``."""
    from safetensors.torch import save_file, save_model

    from .encoder import SentenceEncoder

    data = data or R.prepare_data(cfg, out / "data")
    encoder = encoder or SentenceEncoder()
    print("R_phi: encoding contexts and responses with MiniLM, then fitting the heads", flush=True)
    synthetic = [d for d in data.train if d.id.startswith("synth")]
    real = [d for d in data.train if not d.id.startswith("synth")][: cfg.rm_redial_max]
    train = R.rm_examples(synthetic + real, data.catalog)
    valid = R.rm_examples(data.valid, data.catalog)
    rm, quality = R.train_reward_model(encoder, train, valid, cfg)
    (out / "rm").mkdir(parents=True, exist_ok=True)
    _save_atomic(lambda p: save_model(rm, str(p)), out / "rm" / "reward_model.safetensors")
    features = {"x": rm.train_x, "y": rm.train_y}  # what the online refits during PPO start from
    _save_atomic(lambda p: save_file(features, str(p)), out / "rm" / "train_features.safetensors")
    (out / "rm" / "quality.json").write_text(json.dumps(quality, indent=2))
    Tracker(out).log("rm", 0, quality)
    return quality


def _load_rm(out: pathlib.Path, dim: int) -> R.RewardModel:
    from safetensors.torch import load_model

    rm = R.RewardModel(dim=dim)
    path = out / "rm" / "reward_model.safetensors"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: run `crs-fast train-rm` first")
    load_model(rm, str(path))
    return rm.eval()


def latest_checkpoint(ckpt: pathlib.Path) -> pathlib.Path | None:
    """The complete checkpoint to resume from: ``ckpt`` itself, or ``ckpt.old`` where a crash came
    between :func:`_ckpt_save`'s two renames (``state.json`` is written last, so a directory
    holding it is complete); None when there is neither."""
    for d in (ckpt, ckpt.with_name(ckpt.name + ".old")):
        if (d / "state.json").exists():
            return d
    return None


def _ckpt_save(ckpt: pathlib.Path, policy, opt, state: dict, online: R.OnlineRM | None = None) -> None:
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


def run_ppo(
    cfg: R.Config,
    out: pathlib.Path,
    *,
    resume: bool = False,
    encoder=None,
    stop_after: int | None = None,
    data: R.CRSData | None = None,
):
    """Multi-turn PPO from the SFT policy against R_phi; writes ``ppo/policy.safetensors`` and
    returns the trained policy. ``stop_after`` ends the run after that many iterations as Ctrl-C
    would (tests)."""
    from accelerate import Accelerator

    from ..ops.token_rewards import AdaptiveKLController, FixedKLController
    from .encoder import SentenceEncoder

    cuda = torch.cuda.is_available()
    acc = Accelerator(cpu=not cuda, mixed_precision="bf16" if cuda and torch.cuda.is_bf16_supported() else "no")
    data, policy, tok = _setup(cfg, out, data)
    load_policy(policy, out / "sft" / "policy.safetensors")
    ref = R.frozen_copy(policy).to(acc.device)
    encoder = encoder or SentenceEncoder()
    scorer = R.Scorer(
        _load_rm(out, encoder.dim), encoder, data.catalog, item_cache=out / "rm" / "item_encodings.safetensors"
    )
    online = None
    if cfg.rm_online_steps > 0:
        from safetensors.torch import load_file

        feats = out / "rm" / "train_features.safetensors"
        if not feats.exists():
            raise FileNotFoundError(f"{feats} not found: rerun `crs-fast train-rm` (online R_phi refits need it)")
        off = load_file(str(feats))
        online = R.OnlineRM(scorer.rm, cfg, off["x"], off["y"])
    opt = torch.optim.AdamW(R.param_groups(policy, cfg.ppo_lr, cfg.ppo_item_lr), weight_decay=0.0)
    ctl = (
        AdaptiveKLController(cfg.kl_beta, cfg.kl_target, cfg.kl_horizon)
        if cfg.kl_target
        else FixedKLController(cfg.kl_beta)
    )
    ckpt = out / "ppo" / "checkpoint"
    start = 0
    if resume:
        found = latest_checkpoint(ckpt)
        if found is None:
            if acc.is_main_process:
                print(f"--resume: no checkpoint in {ckpt}; PPO starts at iteration 0")
        else:
            load_policy(policy, found / "policy.safetensors")
            opt.load_state_dict(torch.load(found / "optimizer.pt", weights_only=True))
            state = json.loads((found / "state.json").read_text())
            start, ctl.value = state["iteration"], state["beta"]
            if online is not None:
                online.load(found)
    model, opt = acc.prepare(policy, opt)
    tracker = Tracker(out) if acc.is_main_process else None
    if tracker:
        tracker.drop("ppo", start)  # rows of iterations this run (re)computes
    val_seeds = [E.synthetic_seed(cfg, i, "val") for i in range(cfg.val_users)]
    val = E.synthetic_samples(data.catalog, val_seeds, data.pool)
    it = start
    try:
        with _progress(cfg.ppo_iters, "PPO") as advance:
            advance("", completed=start)
            for it in range(start, cfg.ppo_iters):
                torch.manual_seed(cfg.seed * 7919 + it)
                base = acc.unwrap_model(model)
                seeds = [
                    E.synthetic_seed(cfg, (it * acc.num_processes + acc.process_index) * cfg.episodes + j, "train")
                    for j in range(cfg.episodes)
                ]
                eps = R.rollout(
                    base,
                    tok,
                    data.catalog,
                    seeds,
                    cfg,
                    scorer,
                    gen_seed=cfg.seed * 104729 + it,
                    pool=data.pool,
                    item_values=cfg.item_pg > 0,
                )
                batch = R.make_batch(base, ref, eps, tok, ctl.value, cfg)
                stats = R.ppo_update(model, opt, batch, cfg, acc)
                kl_seq = float((batch.kl * batch.mask).sum(1).mean())
                row = {
                    "reward": sum(sum(e.rewards) for e in eps) / len(eps),
                    "satisfaction": sum(e.satisfaction for e in eps) / len(eps),
                    "kl": kl_seq,
                    "beta": ctl.value,
                    **stats,
                }
                ctl.update(kl_seq, cfg.episodes)
                if online is not None:
                    row.update(online.observe(eps, data.catalog))
                if (it + 1) % cfg.eval_every == 0 or it + 1 == cfg.ppo_iters:
                    row["recall@10"] = E.ranking_metrics(E.ranks(base, tok, data.catalog, val, cfg)[0])["recall@10"]
                if tracker:
                    tracker.log("ppo", it, row)
                advance(f"reward {row['reward']:.3f} kl {kl_seq:.3f}")
                if acc.is_main_process and ((it + 1) % cfg.save_every == 0):
                    _ckpt_save(ckpt, acc.unwrap_model(model), opt, {"iteration": it + 1, "beta": ctl.value}, online)
                if stop_after is not None and it + 1 - start >= stop_after and it + 1 < cfg.ppo_iters:
                    raise KeyboardInterrupt
    except KeyboardInterrupt:
        if acc.is_main_process:
            _ckpt_save(ckpt, acc.unwrap_model(model), opt, {"iteration": it + 1, "beta": ctl.value}, online)
            print(f"interrupted: checkpoint at iteration {it + 1} in {ckpt}; continue with --resume")
        raise
    acc.wait_for_everyone()
    if acc.is_main_process:
        if start < cfg.ppo_iters:  # the final state too, so `--resume` with more iterations goes on
            _ckpt_save(ckpt, acc.unwrap_model(model), opt, {"iteration": cfg.ppo_iters, "beta": ctl.value}, online)
        save_policy(acc.unwrap_model(model), out / "ppo" / "policy.safetensors")
        if online is not None:
            save_policy(online.rm, out / "ppo" / "reward_model.safetensors")
    return acc.unwrap_model(model)


def run_eval(cfg: R.Config, out: pathlib.Path, *, encoder=None, data: R.CRSData | None = None) -> dict:
    """Evaluate the base (zero-shot), SFT and PPO policies; writes ``eval.json``, ``report.md`` and
    ``plots/eval.png``."""
    from .encoder import SentenceEncoder

    encoder = encoder or SentenceEncoder()
    rm = _load_rm(out, encoder.dim)  # first: a missing run fails before anything is written into `out`
    data = data or R.prepare_data(cfg, out / "data")
    scorer = R.Scorer(rm, encoder, data.catalog)
    redial = None
    if data.redial_test:  # the samples and contexts are the same for every policy
        std_s = E.redial_samples(data.redial_test, data.catalog, dedup=False)
        ded_s = E.redial_samples(data.redial_test, data.catalog, dedup=True)
        k = min(len(data.catalog), max(E.KS) + max((len(x.mentioned) for x in std_s), default=0))
        prompts = [x.prompt for x in std_s] + [
            R.prompt(d.turns[:i], data.catalog)
            for d in data.redial_test
            for i, t in enumerate(d.turns)
            if t.role == "system" and t.items and i > 0
        ]
        redial = (std_s, ded_s, k, prompts)
    seeds = [E.synthetic_seed(cfg, cfg.eval_offset + i, "eval") for i in range(cfg.eval_users)]
    samples = E.synthetic_samples(data.catalog, seeds, data.pool)
    result: dict[str, Any] = {"config": cfg.as_dict(), "real_data": data.real, "catalog": len(data.catalog)}
    per: dict[str, dict] = {}
    trunk = E.TrunkCache()
    stages = [("base", None), ("sft", out / "sft" / "policy.safetensors"), ("ppo", out / "ppo" / "policy.safetensors")]
    with _progress(len(stages), "Evaluation") as advance:
        for name, path in stages:
            if path is not None and not path.exists():
                advance(f"{name}: no checkpoint, skipped")
                continue
            _, policy, tok = _setup(cfg, out, data)
            if path is not None:
                load_policy(policy, path)
            policy.to(_device()).eval()
            r_std, r_dedup = E.ranks(policy, tok, data.catalog, samples, cfg)
            dia, per_user = E.dialogue_metrics(policy, tok, data.catalog, seeds, cfg, scorer, encoder, data.pool)
            res = {"synthetic": {"standard": E.ranking_metrics(r_std), "dedup": E.ranking_metrics(r_dedup), **dia}}
            per[name] = {"recall@10": [float(x is not None and x < 10) for x in r_std], **per_user}
            if redial is not None:
                std_s, ded_s, k, prompts = redial
                # one forward per context, shared below; the frozen trunk's part shared by the policies
                lists = E.top_lists(policy, tok, prompts, k, cfg, trunk.for_policy(policy))
                std, _ = E.ranks(policy, tok, data.catalog, std_s, cfg, lists)
                _, ded = E.ranks(policy, tok, data.catalog, ded_s, cfg, lists)
                per[name].update({f"redial_recall@{c}": [float(x is not None and x < c) for x in std] for c in E.KS})
                res["redial"] = {
                    "standard": E.ranking_metrics(std),
                    "dedup": E.ranking_metrics(ded),
                    **E.redial_success(policy, tok, data.catalog, data.redial_test, cfg, lists),
                }
            result[name] = res
            advance(name)
    if "sft" in per and "ppo" in per:
        # satisfaction: one value per user; recalls: the samples of one user (1-3 targets) or one
        # ReDial dialogue share a context, so whole users / dialogues are resampled
        def recall_diff(key: str, groups: list[str]) -> dict[str, float]:
            return E.cluster_bootstrap_diff(per["sft"][key], per["ppo"][key], groups, n=cfg.bootstrap, seed=cfg.seed)

        result["ppo_vs_sft"] = {
            "satisfaction": E.bootstrap_diff(
                per["sft"]["satisfaction"], per["ppo"]["satisfaction"], n=cfg.bootstrap, seed=cfg.seed
            ),
            "recall@10": recall_diff("recall@10", [x.group for x in samples]),
        }
        if redial is not None and "redial_recall@1" in per["sft"] and "redial_recall@1" in per["ppo"]:
            result["redial_ppo_vs_sft"] = {
                f"recall@{c}": recall_diff(f"redial_recall@{c}", [x.group for x in redial[0]]) for c in E.KS
            }
    kl_rows = Tracker(out).rows("ppo")
    if kl_rows:
        result["ppo_kl_final"] = kl_rows[-1]["kl"]
        for key in ("rm_onpolicy_sentiment_spearman", "rm_fixed_onpolicy_sentiment_spearman"):
            onp = [x for r in kl_rows if (x := r.get(key)) is not None and x == x]
            if onp:  # R_phi against the simulator on each new rollout batch, before refitting on it
                result[key] = {"mean": sum(onp) / len(onp), "last": onp[-1], "n": len(onp)}
        fixed = [r["reward_fixed_rm"] for r in kl_rows if "reward_fixed_rm" in r]
        if len(fixed) >= 2 * _SMOOTH:  # the fixed offline R_phi's reward per dialogue, early vs late
            result["reward_fixed_rm"] = {
                "first": sum(fixed[:_SMOOTH]) / _SMOOTH,
                "last": sum(fixed[-_SMOOTH:]) / _SMOOTH,
                "iterations": _SMOOTH,
            }
    rm_q = out / "rm" / "quality.json"
    if rm_q.exists():
        result["reward_model"] = json.loads(rm_q.read_text())
    (out / "eval.json").write_text(json.dumps(result, indent=2))
    (out / "report.md").write_text(report(result))
    eval_plot(result, out / "plots" / "eval.png")
    return result


def _dedup(res: dict) -> str:
    d = res["dedup"]
    return " / ".join(f"{d[f'recall@{k}']:.3f}" for k in E.KS)


def report(result: dict) -> str:
    """The comparison table, the PPO - SFT intervals, KL and R_phi figures, and links to the plots
    (Markdown, paths relative to the run directory)."""
    lines = [
        "| policy | data | R@1 | R@10 | R@50 | NDCG@10 | MRR@10 | dedup R@1 / R@10 / R@50 | satisfaction | coherence "
        "| distinct-2 |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name in ("base", "sft", "ppo"):
        res = result.get(name)
        if not res:
            continue
        s = res["synthetic"]
        st = s["standard"]
        lines.append(
            f"| {name} | synthetic | {st['recall@1']:.3f} | {st['recall@10']:.3f} | {st['recall@50']:.3f} | "
            f"{st['ndcg@10']:.3f} | {st['mrr@10']:.3f} | {_dedup(s)} | {s['satisfaction']:.3f} | "
            f"{s['coherence']:.3f} | {s['distinct2']:.3f} |"
        )
        if "redial" in res:
            r = res["redial"]
            st = r["standard"]
            lines.append(
                f"| {name} | ReDial test | {st['recall@1']:.3f} | {st['recall@10']:.3f} | {st['recall@50']:.3f} | "
                f"{st['ndcg@10']:.3f} | {st['mrr@10']:.3f} | {_dedup(r)} | "
                f"success {r['success_rate']:.3f} | - | - |"
            )
    for name, (r1, r10, r50) in PUBLISHED.items():
        dedup = f"{r1:.3f} / {r10:.3f} / {r50:.3f}" if "dedup" in name else "-"
        std = ("-", "-", "-") if "dedup" in name else (f"{r1:.3f}", f"{r10:.3f}", f"{r50:.3f}")
        lines.append(f"| {name} (published) | ReDial | {' | '.join(std)} | - | - | {dedup} | - | - | - |")
    if "ppo_vs_sft" in result:
        lines.append("")
        for k, v in result["ppo_vs_sft"].items():
            whole = f", {v['groups']} users resampled whole" if "groups" in v else ""
            lines.append(f"PPO - SFT, {k}: {v['diff']:+.4f} (95% bootstrap CI {v['lo']:+.4f} .. {v['hi']:+.4f}{whole})")
    if "redial_ppo_vs_sft" in result:
        for k, v in result["redial_ppo_vs_sft"].items():
            lines.append(
                f"PPO - SFT, ReDial test {k}: {v['diff']:+.4f} (95% bootstrap CI {v['lo']:+.4f} .. {v['hi']:+.4f}, "
                f"{v['groups']} dialogues resampled whole)"
            )
    if "ppo_kl_final" in result:
        lines.append(
            f"\nKL(PPO || SFT reference) per dialogue at the last iteration: {result['ppo_kl_final']:.4f} nats"
        )
    if "reward_model" in result:
        q = result["reward_model"]
        lines.append(
            "\nR_phi held-out quality: " + ", ".join(f"{k} {v:.3f}" for k, v in q.items() if isinstance(v, float))
        )
    if "rm_onpolicy_sentiment_spearman" in result:
        o = result["rm_onpolicy_sentiment_spearman"]
        lines.append(
            f"\nR_phi on-policy (each PPO batch before the refit on it), sentiment Spearman: mean {o['mean']:.3f} "
            f"over {o['n']} iterations, last {o['last']:.3f}"
        )
    if "rm_fixed_onpolicy_sentiment_spearman" in result:
        o = result["rm_fixed_onpolicy_sentiment_spearman"]
        lines.append(
            f"\nFixed offline R_phi on the same batches, sentiment Spearman: mean {o['mean']:.3f} "
            f"over {o['n']} iterations, last {o['last']:.3f}"
        )
    if "reward_fixed_rm" in result:
        f = result["reward_fixed_rm"]
        lines.append(
            f"\nReward per dialogue of the PPO rollouts under the fixed offline R_phi: {f['first']:.3f} "
            f"(mean of the first {f['iterations']} iterations) -> {f['last']:.3f} (mean of the last {f['iterations']})"
        )
    lines.append("\n![base, SFT and PPO](plots/eval.png)")
    if "ppo_kl_final" in result:  # PPO ran: plots/ppo.png is drawn from its metrics
        lines.append("\n![PPO training](plots/ppo.png)")
    return "\n".join(lines) + "\n"


def _save_fig(plt, fig, path: pathlib.Path) -> pathlib.Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


_SMOOTH = 5  # iterations in the trailing mean drawn over noisy per-iteration curves


def trailing_mean(values: Sequence[float], k: int) -> list[float]:
    """``m_i = mean(values[i - k + 1 .. i])`` for ``i = k - 1 .. n - 1`` (``n - k + 1`` values)."""
    if k < 1:
        raise ValueError(f"trailing_mean: k must be >= 1, got {k}")
    return [sum(values[i - k + 1 : i + 1]) / k for i in range(k - 1, len(values))]


def plots(out: pathlib.Path, *, kl_target: float | None = None) -> list[pathlib.Path]:
    """PNG plots over PPO iterations of the R_phi reward (under the refit R_phi PPO trains on,
    whose scale moves with each refit, and under the fixed offline R_phi), the simulated users'
    satisfaction in the rollouts (the ground truth R_phi stands in for), the KL, the value loss
    and Recall@10 (and the SFT loss); curves with at least
    ``2 * _SMOOTH`` points also get the trailing mean of the last ``_SMOOTH`` iterations, and the
    KL panel the adaptive controller's ``kl_target`` when one is given."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tracker = Tracker(out)
    rows = tracker.rows("ppo")
    written = []
    (out / "plots").mkdir(parents=True, exist_ok=True)
    panels = [  # (title, [(metrics key, legend label)])
        (
            "R_phi reward per dialogue",
            [("reward", "refit R_phi (trained on)"), ("reward_fixed_rm", "fixed offline R_phi")],
        ),
        ("simulated satisfaction (rollouts)", [("satisfaction", "")]),
        ("KL to reference (nats / dialogue)", [("kl", "")]),
        ("value loss", [("value_loss", "")]),
        ("Recall@10 (validation users)", [("recall@10", "")]),
    ]
    if rows:
        fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.2))
        for ax, (title, keys) in zip(axes, panels, strict=True):
            for j, (key, label) in enumerate(keys):
                pts = [(r["step"], r[key]) for r in rows if key in r]
                if not pts:
                    continue
                color = f"C{j}"
                name = f"{label}, " if label else ""
                ax.plot(*zip(*pts, strict=True), marker="o", ms=3, alpha=0.4, color=color, label=f"{name}per iteration")
                if len(pts) >= 2 * _SMOOTH:
                    steps, vals = zip(*pts, strict=True)
                    ax.plot(
                        steps[_SMOOTH - 1 :],
                        trailing_mean(vals, _SMOOTH),
                        lw=2,
                        color=color,
                        label=f"{name}mean of last {_SMOOTH}",
                    )
            if title.startswith("KL") and kl_target is not None:
                ax.axhline(kl_target, color="grey", ls="--", lw=1, label=f"target {kl_target:g}")
            if len(ax.get_legend_handles_labels()[0]) > 1:
                ax.legend(fontsize=7)
            ax.set_title(title)
            ax.set_xlabel("PPO iteration")
        written.append(_save_fig(plt, fig, out / "plots" / "ppo.png"))
    sft_rows = tracker.rows("sft")
    if sft_rows:
        fig, ax = plt.subplots(figsize=(5, 3.2))
        ax.plot([r["step"] for r in sft_rows], [r["sft_loss"] for r in sft_rows])
        ax.set_title("SFT loss")
        ax.set_xlabel("step")
        written.append(_save_fig(plt, fig, out / "plots" / "sft.png"))
    return written


def eval_plot(result: dict, path: pathlib.Path) -> pathlib.Path | None:
    """``path`` (PNG): base, SFT and PPO side by side on synthetic satisfaction and Recall@10 and,
    when evaluated, ReDial test Recall@1/10/50 beside the published UniCRS numbers; each panel's
    title carries PPO - SFT with its 95% bootstrap interval. None when no policy was evaluated."""
    names = [n for n in ("base", "sft", "ppo") if n in result]
    if not names:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def diff(group: str, key: str) -> str:
        d = result.get(group, {}).get(key)
        return f"\nPPO - SFT {d['diff']:+.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}]" if d else ""

    panels = [
        ("synthetic satisfaction" + diff("ppo_vs_sft", "satisfaction"), lambda r: r["synthetic"]["satisfaction"], None),
        (
            "synthetic Recall@10" + diff("ppo_vs_sft", "recall@10"),
            lambda r: r["synthetic"]["standard"]["recall@10"],
            None,
        ),
    ]
    if all("redial" in result[n] for n in names):
        for i, k in enumerate(E.KS):
            panels.append(
                (
                    f"ReDial test Recall@{k}" + diff("redial_ppo_vs_sft", f"recall@{k}"),
                    lambda r, k=k: r["redial"]["standard"][f"recall@{k}"],
                    PUBLISHED["UniCRS"][i],
                )
            )
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, len(panels), figsize=(3.3 * len(panels), 3.4))
    for ax, (title, get, published) in zip(axes, panels, strict=True):
        vals = [get(result[n]) for n in names]
        bars = ax.bar(names, vals, color=[f"C{i}" for i in range(len(names))])
        ax.bar_label(bars, fmt="%.3f", fontsize=7)
        if published is not None:
            ax.axhline(published, color="grey", ls="--", lw=1, label=f"UniCRS (published) {published:.3f}")
            ax.legend(fontsize=7, loc="upper left")
        ax.set_title(title, fontsize=9)
        ax.margins(y=0.15)
    return _save_fig(plt, fig, path)


def run_demo(cfg: R.Config, out: pathlib.Path, *, quick: bool = False) -> dict:
    """SFT -> R_phi -> PPO -> evaluation, the table and the plots; with ``quick`` also
    ``metrics.json`` (Recall@10, NDCG@10, KL, coherence, satisfaction for base, SFT and PPO)."""
    from .encoder import SentenceEncoder

    t0 = time.time()
    out.mkdir(parents=True, exist_ok=True)
    if (out / "metrics.jsonl").exists():
        (out / "metrics.jsonl").unlink()
    encoder = SentenceEncoder()
    data = R.prepare_data(cfg, out / "data")
    run_sft(cfg, out, data=data)
    run_train_rm(cfg, out, encoder=encoder, data=data)
    run_ppo(cfg, out, encoder=encoder, data=data)
    result = run_eval(cfg, out, encoder=encoder, data=data)
    plots(out, kl_target=cfg.kl_target)
    summary = {
        name: {
            "recall@10": result[name]["synthetic"]["standard"]["recall@10"],
            "ndcg@10": result[name]["synthetic"]["standard"]["ndcg@10"],
            "coherence": result[name]["synthetic"]["coherence"],
            "satisfaction": result[name]["synthetic"]["satisfaction"],
            "kl": 0.0 if name != "ppo" else result.get("ppo_kl_final", float("nan")),
        }
        for name in ("base", "sft", "ppo")
        if name in result
    }
    summary["seconds"] = time.time() - t0
    (out / "metrics.json").write_text(json.dumps(summary, indent=2))
    print((out / "report.md").read_text())
    return result
