"""Recall@1/10/50 (standard, dedup) on a real dataset's validation dialogues of a run's SFT policy
and of PPO policies trained from it, each with the paired dialogue-level bootstrap 95% interval of
PPO minus SFT: what a PPO setting is chosen on (``--split test`` reports the test set, once chosen).

    python valid_vs_sft.py RUN_DIR PPO_DIR [PPO_DIR ...] [--config configs/full.toml] [--set KEY=VALUE ...]

RUN_DIR holds the SFT policy (``sft/policy.safetensors``) and the prepared data; each PPO_DIR a
``policy.safetensors``. The configuration is the config file's, for the run's dataset, with
``--set`` overrides (as the run was made; policy settings only matter).
"""

import argparse
import ast
import json
import pathlib

from crs_fast.crs.rlhf.build import build_policy
from crs_fast.crs.rlhf.compare import hits, sample_sets
from crs_fast.crs.rlhf.config import Config
from crs_fast.crs.rlhf.corpus import prepare_data
from crs_fast.crs.rlhf.evaluate import KS, TrunkCache, cluster_bootstrap_diff, ranking_metrics, ranks, top_lists
from crs_fast.crs.rlhf.run_io import load_policy


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run", type=pathlib.Path)
    ap.add_argument("ppo", type=pathlib.Path, nargs="+")
    ap.add_argument("--config", default="configs/full.toml")
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--split", choices=["valid", "test"], default="valid", help="test: report only, after choosing")
    a = ap.parse_args()
    sets = {
        k: ast.literal_eval(v) if v[:1].isdigit() or v[:1] == "-" else v for k, v in (s.split("=", 1) for s in a.set)
    }
    cfg = Config.load(a.config, **sets)
    data = prepare_data(cfg, a.run / "data")
    dialogues = data.real_valid if a.split == "valid" else data.real_test
    std_s, ded_s, depth = sample_sets(dialogues, data.catalog, final_only=cfg.dataset == "opendialkg")
    prompts = [s.prompt for s in std_s]
    trunk = TrunkCache()
    results: dict[str, dict] = {}
    ref: dict[str, list] = {}
    for path in [a.run / "sft" / "policy.safetensors"] + [p / "policy.safetensors" for p in a.ppo]:
        policy, tok = build_policy(cfg, data)
        load_policy(policy, path)
        policy.eval()
        lists = top_lists(policy, tok, prompts, depth, cfg, trunk.for_policy(policy))
        got = {
            "standard": ranks(policy, tok, data.catalog, std_s, cfg, lists)[0],
            "dedup": ranks(policy, tok, data.catalog, ded_s, cfg, lists)[1],
        }
        name = str(path.parent)
        row: dict = {p: ranking_metrics(r) for p, r in got.items()}
        cells = [" / ".join(f"{row[p][f'recall@{k}']:.4f}" for k in KS) for p in got]
        print(f"{name}: standard {cells[0]}  dedup {cells[1]}", flush=True)
        if ref:
            for p, samples in (("standard", std_s), ("dedup", ded_s)):
                groups = [s.group for s in samples]
                row[f"{p}_minus_sft"] = {
                    f"recall@{k}": cluster_bootstrap_diff(hits(ref[p], k), hits(got[p], k), groups, n=1000, seed=0)
                    for k in KS
                }
                print(
                    f"    minus SFT, {p}: "
                    + ", ".join(
                        f"R@{k} {b['diff']:+.4f} ({b['lo']:+.4f} .. {b['hi']:+.4f})"
                        for k, b in zip(KS, row[f"{p}_minus_sft"].values(), strict=True)
                    ),
                    flush=True,
                )
        else:
            ref.update(got)
        results[name] = row
    print(json.dumps(results))


if __name__ == "__main__":
    main()
