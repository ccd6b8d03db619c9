"""``crs-fast eval``: the base, SFT and PPO policies and the baselines on the same samples
(synthetic users, the real dataset's test and validation dialogues), with paired intervals;
writes ``eval.json``, ``report.md`` and ``plots/eval.png``."""

from __future__ import annotations

import json
import pathlib
from typing import Any

from ..data.schema import DataError
from .compare import evaluate_baselines, hits, ppo_vs, sample_sets
from .config import Config
from .corpus import CRSData, prepare_data, prompt, test_dialogues
from .evaluate import (
    KS,
    RankingReuse,
    TrunkCache,
    bootstrap_diff,
    cluster_bootstrap_diff,
    dialogue_metrics,
    ranking_metrics,
    ranks,
    redial_success,
    synthetic_samples,
    synthetic_seed,
    top_lists,
)
from .lm import render
from .report import eval_plot, ppo_summary, report
from .reward import Scorer
from .run_io import (
    Tracker,
    default_device,
    load_policy,
    load_reward_model,
    progress_bar,
    reward_model_path,
    setup_stage,
)


def run_eval(
    cfg: Config,
    out: pathlib.Path,
    *,
    encoder=None,
    data: CRSData | None = None,
    redial_test: pathlib.Path | None = None,
    opendialkg_test: pathlib.Path | None = None,
) -> dict:
    """Evaluate the base (zero-shot), SFT and PPO policies and the baselines on the same samples;
    writes ``eval.json``, ``report.md`` and ``plots/eval.png``. ``redial_test`` /
    ``opendialkg_test``: a test file in the dataset's original format (ReDial ``.jsonl``;
    OpenDialKG's processed ``.jsonl`` turns, ``.json`` sessions or ``opendialkg.csv``) to evaluate on
    instead of the data directory's test set (the official full test set, for instance); the run
    must use that dataset's catalog."""
    from .encoder import SentenceEncoder

    if redial_test is not None and opendialkg_test is not None:
        raise DataError("give one test file: --redial-test or --opendialkg-test, not both")
    test_name, test_path = ("redial", redial_test) if redial_test is not None else ("opendialkg", opendialkg_test)
    reward_model_path(out)  # first: a missing run fails before anything is loaded or written into `out`
    if test_path is not None:
        test_dialogues(test_name, test_path)  # a bad file fails here, before the models load
    encoder = encoder or SentenceEncoder()
    rm = load_reward_model(out, encoder.dim)
    data = data or prepare_data(cfg, out / "data")
    if test_path is not None:
        if not data.real or data.dataset != test_name:
            label = "ReDial" if test_name == "redial" else "OpenDialKG"
            raise DataError(f"{test_path}: needs the {label} catalog (dataset {test_name}, real_data on, data present)")
        data.real_test = test_dialogues(test_name, test_path, data.catalog)
    scorer = Scorer(rm, encoder, data.catalog)
    ds = data.dataset  # the real dataset's name: the key of its results
    final_only = ds == "opendialkg"  # its records' targets are their last (recommending) turn
    real_sets = {}  # set name -> (standard samples, dedup samples, top-list depth); shared by every policy
    if data.real_test:
        real_sets[ds] = sample_sets(data.real_test, data.catalog, final_only=final_only)
    if data.real_valid:  # the validation dialogues: the figures choices are made on
        real_sets[f"{ds}_valid"] = sample_sets(data.real_valid, data.catalog, final_only=final_only)
    success_prompts = []  # ReDial's success rate reads the top item of every recommending turn
    if ds == "redial" and data.real_test:
        success_prompts = [
            prompt(d.turns[:i], data.catalog)
            for d in data.real_test
            for i, t in enumerate(d.turns)
            if t.role == "system" and t.items and i > 0
        ]
    seeds = [synthetic_seed(cfg, cfg.eval_offset + i, "eval") for i in range(cfg.eval_users)]
    samples = synthetic_samples(data.catalog, seeds, data.pool)
    result: dict[str, Any] = {
        "config": cfg.as_dict(),
        "real_data": data.real,
        "dataset": ds,
        "catalog": len(data.catalog),
    }
    per: dict[str, dict] = {}
    policy_ranks: dict[str, dict] = {}
    trunk = TrunkCache()
    reuse = RankingReuse()
    stages = [("base", None), ("sft", out / "sft" / "policy.safetensors"), ("ppo", out / "ppo" / "policy.safetensors")]
    with progress_bar(len(stages), "Evaluation") as advance:
        for name, path in stages:
            if path is not None and not path.exists():
                advance(f"{name}: no checkpoint, skipped")
                continue
            _, policy, tok = setup_stage(cfg, out, data)
            if path is not None:
                load_policy(policy, path)
            policy.to(default_device()).eval()
            # rankings of an earlier policy with the same item scores are reused (PPO, query frozen)
            store, same_as = reuse.store_for(name, policy)
            if "synthetic" not in store:
                store["synthetic"] = ranks(policy, tok, data.catalog, samples, cfg)
            r_std, r_dedup = store["synthetic"]
            dia, per_user = dialogue_metrics(policy, tok, data.catalog, seeds, cfg, scorer, encoder, data.pool)
            res = {"synthetic": {"standard": ranking_metrics(r_std), "dedup": ranking_metrics(r_dedup), **dia}}
            per[name] = {"recall@10": [float(x is not None and x < 10) for x in r_std], **per_user}
            policy_ranks[name] = {"synthetic": (r_std, r_dedup)}
            for set_name, (std_s, ded_s, k) in real_sets.items():
                # one forward per context, shared by both protocols; the frozen trunk's part by the policies
                extra = success_prompts if set_name == ds else []
                if set_name not in store:
                    prompts = [x.prompt for x in std_s] + extra
                    store[set_name] = top_lists(policy, tok, prompts, k, cfg, trunk.for_policy(policy))
                lists = store[set_name]
                std, _ = ranks(policy, tok, data.catalog, std_s, cfg, lists)
                _, ded = ranks(policy, tok, data.catalog, ded_s, cfg, lists)
                policy_ranks[name][set_name] = (std, ded)
                res[set_name] = {"standard": ranking_metrics(std), "dedup": ranking_metrics(ded)}
                if extra:
                    res[set_name].update(redial_success(policy, tok, data.catalog, data.real_test, cfg, lists))
            if same_as is not None:
                res["rankings_same_as"] = same_as  # item scores equal to that policy's, tensor for tensor
            if ds in real_sets:
                per[name].update({f"{ds}_recall@{c}": hits(policy_ranks[name][ds][0], c) for c in KS})
            result[name] = res
            advance(name)
    if "sft" in per and "ppo" in per:
        # satisfaction: one value per user; recalls: the samples of one user (1-3 targets) or one
        # real dialogue share a context, so whole users / dialogues are resampled
        def recall_diff(key: str, groups: list[str]) -> dict[str, float]:
            return cluster_bootstrap_diff(per["sft"][key], per["ppo"][key], groups, n=cfg.bootstrap, seed=cfg.seed)

        # per held-out user: the simulator's satisfaction and acceptance (the true reward), the
        # offline R_phi's reward (the proxy PPO maximises) and coherence, paired by user
        result["ppo_vs_sft"] = {
            key: bootstrap_diff(per["sft"][key], per["ppo"][key], n=cfg.bootstrap, seed=cfg.seed)
            for key in ("satisfaction", "accepted", "rphi_reward", "coherence")
        }
        result["ppo_vs_sft"]["recall@10"] = recall_diff("recall@10", [x.group for x in samples])
        if ds in real_sets:
            groups = [x.group for x in real_sets[ds][0]]
            result[f"{ds}_ppo_vs_sft"] = {f"recall@{c}": recall_diff(f"{ds}_recall@{c}", groups) for c in KS}
    sets = {"synthetic": (samples, samples), **{n: (v[0], v[1]) for n, v in real_sets.items()}}
    real_train = [d for d in data.train if not d.id.startswith("synth")]
    train = {"synthetic": [d for d in data.train if d.id.startswith("synth")]}
    train.update({n: real_train for n in real_sets})
    baselines, baseline_ranks = evaluate_baselines(
        data.catalog, sets, train, cfg, encoder, lambda text: render(text, data.catalog)
    )
    result["baselines"] = baselines
    # every policy minus every baseline, paired (the untrained policy's and SFT's too)
    result["vs_baselines"] = {name: ppo_vs(r, baseline_ranks, sets, cfg) for name, r in policy_ranks.items()}
    if "ppo" in policy_ranks:
        result["ppo_vs_baselines"] = result["vs_baselines"]["ppo"]
    result.update(ppo_summary(Tracker(out).rows("ppo")))
    rm_q = out / "rm" / "quality.json"
    if rm_q.exists():
        result["reward_model"] = json.loads(rm_q.read_text())
    (out / "eval.json").write_text(json.dumps(result, indent=2))
    (out / "report.md").write_text(report(result))
    eval_plot(result, out / "plots" / "eval.png")
    return result
