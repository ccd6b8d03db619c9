"""The RLHF pipeline's stages as commands: ``crs-fast sft | train-rm | ppo | eval | demo``. Everything
a stage writes goes under ``--out DIR``: ``policy_config.json`` (checked by later stages), ``sft/policy.safetensors``,
``rm/reward_model.safetensors`` and ``rm/quality.json`` (and ``rm/item_encodings.safetensors``, the
catalog's sentence embeddings, cached by ``ppo``), ``ppo/checkpoint/`` (written atomically
every ``save_every`` iterations and on Ctrl-C; ``--resume`` continues from it), ``metrics.jsonl``
(one JSON object per step or iteration, with its stage), ``eval.json`` and ``report.md`` (the
comparison table), and ``plots/*.png``. TensorBoard event files too when ``tensorboard`` is
installed. Models are rebuilt from the configuration and data (deterministic), then loaded."""

from __future__ import annotations

import json
import pathlib
import time

import torch

from .anchor import build_anchor
from .build import FROZEN, frozen_copy, param_groups
from .config import Config
from .corpus import CRSData, prepare_data
from .eval_stage import run_eval
from .evaluate import (
    ranking_metrics,
    ranks,
    synthetic_samples,
    synthetic_seed,
)
from .item_fit import fit_info, fit_on_real
from .online_rm import OnlineRM
from .ppo import make_batch, ppo_update
from .report import plots
from .reward import Scorer, rm_examples, train_reward_model
from .rollout import rollout
from .run_io import (
    Tracker,
    default_device,
    latest_checkpoint,
    load_policy,
    load_reward_model,
    progress_bar,
    save_atomic,
    save_checkpoint,
    save_policy,
    setup_stage,
)
from .sft import sft

__all__ = ["run_demo", "run_eval", "run_ppo", "run_sft", "run_train_rm", "setup_stage"]


def run_sft(cfg: Config, out: pathlib.Path, *, data: CRSData | None = None) -> pathlib.Path:
    """SFT from the base model; writes ``sft/policy.safetensors``."""
    data, policy, tok = setup_stage(cfg, out, data, start=True)
    policy.to(default_device())
    tracker = Tracker(out)
    with progress_bar(cfg.sft_steps, "SFT") as advance:
        sft(
            policy,
            tok,
            data,
            cfg,
            progress=lambda s, row: (tracker.log("sft", s, row), advance(f"loss {row['sft_loss']:.3f}")),
        )
    if cfg.item_fit_epochs and data.real_valid:  # the item parts on real recommendations, valid-stopped
        with progress_bar(cfg.item_fit_epochs, "item fit") as advance:
            fit_on_real(
                policy,
                tok,
                data,
                cfg,
                progress=lambda phase, n, total: advance(f"queries: {phase} {n}/{total}", completed=0),
                on_epoch=lambda e, row: (tracker.log("item_fit", e, row), advance(fit_info(row), completed=e)),
            )
    path = out / "sft" / "policy.safetensors"
    save_policy(policy, path)
    return path


def run_train_rm(cfg: Config, out: pathlib.Path, encoder=None, *, data: CRSData | None = None) -> dict:
    """Train R_phi on the weak labels; writes ``rm/reward_model.safetensors`` and ``rm/quality.json``."""
    from safetensors.torch import save_file, save_model

    from .encoder import SentenceEncoder

    data = data or prepare_data(cfg, out / "data")
    encoder = encoder or SentenceEncoder()
    print("R_phi: encoding contexts and responses with MiniLM, then fitting the heads", flush=True)
    synthetic = [d for d in data.train if d.id.startswith("synth")]
    real = [d for d in data.train if not d.id.startswith("synth")][: cfg.rm_redial_max]
    train = rm_examples(synthetic + real, data.catalog)
    valid = rm_examples(data.valid, data.catalog)
    rm, quality = train_reward_model(encoder, train, valid, cfg)
    (out / "rm").mkdir(parents=True, exist_ok=True)
    save_atomic(lambda p: save_model(rm, str(p)), out / "rm" / "reward_model.safetensors")
    features = {"x": rm.train_x, "y": rm.train_y}  # what the online refits during PPO start from
    save_atomic(lambda p: save_file(features, str(p)), out / "rm" / "train_features.safetensors")
    (out / "rm" / "quality.json").write_text(json.dumps(quality, indent=2))
    Tracker(out).log("rm", 0, quality)
    return quality


def run_ppo(
    cfg: Config,
    out: pathlib.Path,
    *,
    resume: bool = False,
    encoder=None,
    stop_after: int | None = None,
    data: CRSData | None = None,
):
    """Multi-turn PPO from the SFT policy against R_phi; writes ``ppo/policy.safetensors`` and
    returns the trained policy. ``stop_after`` ends the run after that many iterations as Ctrl-C
    would (tests)."""
    from accelerate import Accelerator

    from ...ops.kl_controllers import AdaptiveKLController, FixedKLController
    from .encoder import SentenceEncoder

    cuda = torch.cuda.is_available()
    acc = Accelerator(cpu=not cuda, mixed_precision="bf16" if cuda and torch.cuda.is_bf16_supported() else "no")
    data, policy, tok = setup_stage(cfg, out, data)
    load_policy(policy, out / "sft" / "policy.safetensors")
    ref = frozen_copy(policy).to(acc.device)
    encoder = encoder or SentenceEncoder()
    scorer = Scorer(
        load_reward_model(out, encoder.dim), encoder, data.catalog, item_cache=out / "rm" / "item_encodings.safetensors"
    )
    online = None
    if cfg.rm_online_steps > 0:
        from safetensors.torch import load_file

        feats = out / "rm" / "train_features.safetensors"
        if not feats.exists():
            raise FileNotFoundError(f"{feats} not found: rerun `crs-fast train-rm` (online R_phi refits need it)")
        off = load_file(str(feats))
        online = OnlineRM(scorer.rm, cfg, off["x"], off["y"])
    frozen = FROZEN[cfg.ppo_freeze]
    opt = torch.optim.AdamW(param_groups(policy, cfg.ppo_lr, cfg.ppo_item_lr, frozen), weight_decay=0.0)
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
    anchor = build_anchor(acc.unwrap_model(model), ref, tok, data, cfg)  # on the policy's device
    tracker = Tracker(out) if acc.is_main_process else None
    if tracker:
        tracker.drop("ppo", start)  # rows of iterations this run (re)computes
    val_seeds = [synthetic_seed(cfg, i, "val") for i in range(cfg.val_users)]
    val = synthetic_samples(data.catalog, val_seeds, data.pool)
    it = start
    try:
        with progress_bar(cfg.ppo_iters, "PPO") as advance:
            advance("", completed=start)
            for it in range(start, cfg.ppo_iters):
                torch.manual_seed(cfg.seed * 7919 + it)
                base = acc.unwrap_model(model)
                seeds = [
                    synthetic_seed(cfg, (it * acc.num_processes + acc.process_index) * cfg.episodes + j, "train")
                    for j in range(cfg.episodes)
                ]
                eps = rollout(
                    base,
                    tok,
                    data.catalog,
                    seeds,
                    cfg,
                    scorer,
                    gen_seed=cfg.seed * 104729 + it,
                    pool=data.pool,
                    item_values=cfg.expected_item_surrogate,
                )
                batch = make_batch(base, ref, eps, tok, ctl.value, cfg)
                stats = ppo_update(model, opt, batch, cfg, acc, anchor)
                kls = batch.kl_summary()
                kl_seq = kls["kl"]
                row = {
                    "reward": sum(sum(e.rewards) for e in eps) / len(eps),
                    "satisfaction": sum(e.satisfaction for e in eps) / len(eps),
                    **kls,
                    "beta": ctl.value,
                    **stats,
                }
                ctl.update(kl_seq, cfg.episodes)
                if online is not None:
                    row.update(online.observe(eps, data.catalog))
                if (it + 1) % cfg.eval_every == 0 or it + 1 == cfg.ppo_iters:
                    row["recall@10"] = ranking_metrics(ranks(base, tok, data.catalog, val, cfg)[0])["recall@10"]
                if tracker:
                    tracker.log("ppo", it, row)
                advance(f"reward {row['reward']:.3f} kl {kl_seq:.3f}")
                if acc.is_main_process and ((it + 1) % cfg.save_every == 0):
                    save_checkpoint(
                        ckpt, acc.unwrap_model(model), opt, {"iteration": it + 1, "beta": ctl.value}, online
                    )
                if stop_after is not None and it + 1 - start >= stop_after and it + 1 < cfg.ppo_iters:
                    raise KeyboardInterrupt
    except KeyboardInterrupt:
        if acc.is_main_process:
            save_checkpoint(ckpt, acc.unwrap_model(model), opt, {"iteration": it + 1, "beta": ctl.value}, online)
            print(f"interrupted: checkpoint at iteration {it + 1} in {ckpt}; continue with --resume")
        raise
    acc.wait_for_everyone()
    if acc.is_main_process:
        if start < cfg.ppo_iters:  # the final state too, so `--resume` with more iterations goes on
            save_checkpoint(ckpt, acc.unwrap_model(model), opt, {"iteration": cfg.ppo_iters, "beta": ctl.value}, online)
        save_policy(acc.unwrap_model(model), out / "ppo" / "policy.safetensors")
        if online is not None:
            save_policy(online.rm, out / "ppo" / "reward_model.safetensors")
    return acc.unwrap_model(model)


def run_demo(cfg: Config, out: pathlib.Path, *, quick: bool = False) -> dict:
    """SFT -> R_phi -> PPO -> evaluation, the table and the plots; with ``quick`` also
    ``metrics.json`` (Recall@10, NDCG@10, KL, coherence, satisfaction for base, SFT and PPO)."""
    from .encoder import SentenceEncoder

    t0 = time.time()
    out.mkdir(parents=True, exist_ok=True)
    if (out / "metrics.jsonl").exists():
        (out / "metrics.jsonl").unlink()
    encoder = SentenceEncoder()
    data = prepare_data(cfg, out / "data")
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
