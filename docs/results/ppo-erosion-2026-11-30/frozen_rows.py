"""PPO with the learned item rows frozen (the experiment behind `ppo_freeze = "rows"`, now a Config option).

    python docs/results/ppo-erosion-2026-11-30/frozen_rows.py RUN_DIR [--set KEY=VALUE ...]

Runs ``crs-fast ppo``'s stage on RUN_DIR (its sft/ and rm/ already there) with ``item_out`` and the
item attribute embeddings excluded from training: PPO's item choice can then move only through the
item bias, the mention bonus and the top layers' hidden states. From an SFT whose item rows stay
near zero (item_lr 1e-6), the hidden states barely reach the item scores, so the real-data ranking
should stay where SFT left it; what it costs in synthetic satisfaction is the question.
"""

import argparse
import pathlib

from crs_fast.crs.rlhf import stages
from crs_fast.crs.rlhf.build import param_groups
from crs_fast.crs.rlhf.config import Config


def groups_without_rows(policy, lr, item_lr):
    for name, p in policy.named_parameters():
        if name.startswith(("item_out", "item_attr.")):
            p.requires_grad_(False)
    return param_groups(policy, lr, item_lr)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out", type=pathlib.Path)
    ap.add_argument("--set", action="append", default=[])
    a = ap.parse_args()
    sets = dict(s.split("=", 1) for s in a.set)
    cfg = Config.load(
        "configs/full.toml", dataset="redial", **{k: type(getattr(Config(), k))(v) for k, v in sets.items()}
    )
    stages.param_groups = groups_without_rows
    stages.run_ppo(cfg, a.out)


if __name__ == "__main__":
    main()
