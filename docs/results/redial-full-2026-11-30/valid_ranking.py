"""Recall@1/10/50 (standard, dedup) on the real dataset's validation dialogues of saved policies of
a run, beside the co-occurrence baseline on the same samples, with the paired dialogue-level
bootstrap 95% interval of each minus the baseline: what a setting is chosen on
(``--split test`` reports the test set, once a setting is chosen).

    python docs/results/redial-full-2026-11-30/valid_ranking.py RUN_DIR [stage ...] [--set KEY=VALUE ...]

Stages: base, sft, ppo (default: all three). The run's configuration is the default one plus
``--set`` overrides (as the run was made).
"""

import argparse
import pathlib

from crs_fast.crs.rlhf.baselines import Baselines, baseline_lists, sample_key
from crs_fast.crs.rlhf.build import build_policy
from crs_fast.crs.rlhf.config import Config
from crs_fast.crs.rlhf.corpus import prepare_data
from crs_fast.crs.rlhf.evaluate import (
    KS,
    TrunkCache,
    cluster_bootstrap_diff,
    ranking_metrics,
    ranks,
    real_samples,
    top_lists,
)
from crs_fast.crs.rlhf.run_io import load_policy


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out", type=pathlib.Path)
    ap.add_argument("stages", nargs="*", default=["base", "sft", "ppo"])
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--split", choices=["valid", "test"], default="valid", help="test: report only, after choosing")
    a = ap.parse_args()
    cfg = Config(**{k: type(getattr(Config(), k))(v) for k, v in (s.split("=", 1) for s in a.set)})
    data = prepare_data(cfg, a.out / "data")
    dialogues = data.real_valid if a.split == "valid" else data.real_test
    std_s = real_samples(dialogues, data.catalog, dedup=False, final_only=cfg.dataset == "opendialkg")
    ded_s = real_samples(dialogues, data.catalog, dedup=True, final_only=cfg.dataset == "opendialkg")
    extra = max(len(s.mentioned) for s in std_s + ded_s)
    prompts = list(dict.fromkeys(s.prompt for s in std_s + ded_s))

    ref: dict[str, list] = {}

    def show(name, std, ded):
        m, d = ranking_metrics(std), ranking_metrics(ded)
        cells = [" / ".join(f"{x[f'recall@{k}']:.3f}" for k in KS) for x in (m, d)]
        print(f"{name:14s} n={m['n']}/{d['n']}  standard {cells[0]}  dedup {cells[1]}", flush=True)
        if not ref:
            ref.update(standard=std, dedup=ded)
            return
        for protocol, r, samples in (("standard", std, std_s), ("dedup", ded, ded_s)):
            diffs = []
            for k in KS:
                hit = [float(x is not None and x < k) for x in r]
                base_hit = [float(x is not None and x < k) for x in ref[protocol]]
                b = cluster_bootstrap_diff(base_hit, hit, [s.group for s in samples], n=1000, seed=0)
                diffs.append(f"R@{k} {b['diff']:+.3f} ({b['lo']:+.3f} .. {b['hi']:+.3f})")
            print(f"    minus co-occurrence, {protocol}: " + ", ".join(diffs), flush=True)

    real_train = [d for d in data.train if not d.id.startswith("synth")]
    base = Baselines(data.catalog, real_train)
    lists = baseline_lists(base, "cooccurrence", std_s + ded_s, 50 + extra)
    show(
        "cooccurrence",
        *(ranks(None, None, data.catalog, s, cfg, lists, key=sample_key)[i] for s, i in ((std_s, 0), (ded_s, 1))),
    )
    trunk = TrunkCache()
    for stage in a.stages:
        policy, tok = build_policy(cfg, data)
        if stage != "base":
            load_policy(policy, a.out / stage / "policy.safetensors")
        policy.eval()
        lists = top_lists(policy, tok, prompts, 50 + extra, cfg, trunk.for_policy(policy))
        show(
            stage,
            ranks(policy, tok, data.catalog, std_s, cfg, lists)[0],
            ranks(policy, tok, data.catalog, ded_s, cfg, lists)[1],
        )


if __name__ == "__main__":
    main()
