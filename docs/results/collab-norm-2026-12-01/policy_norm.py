"""The untrained policy's item ranking on a real dataset's dialogues with the context items'
co-occurrence rows damped by their popularity, ``P_c * (1 + mentions_c)^-alpha`` (``collab_norm``;
the library's own code, no LM forward: exact while the item rows are zero).

    python docs/results/collab-norm-2026-12-01/policy_norm.py [valid|test] [redial|opendialkg]

The dataset's tuned settings (``Config.load``) at ``collab_norm = 0``, ``collab_weight = 1``;
``collab_p`` and ``collab_q`` are rescaled in place for each ``(alpha, collab_weight)``. Prints
Recall@10 standard / dedup per setting. Run on ``valid`` to choose; ``test`` only to report the
chosen setting.
"""

import pathlib
import sys

import torch

from crs_fast.crs.rlhf.build import build_policy
from crs_fast.crs.rlhf.collab import cooccurrence_counts
from crs_fast.crs.rlhf.config import Config
from crs_fast.crs.rlhf.corpus import prepare_data
from crs_fast.crs.rlhf.evaluate import real_samples
from crs_fast.crs.rlhf.item_fit import queries, recall

GRID = [
    (0.0, 1.0),
    (0.0, 1.5),
    (0.0, 2.0),
    (0.25, 1.0),
    (0.25, 1.5),
    (0.25, 2.0),
    (0.5, 1.0),
    (0.5, 1.5),
    (0.5, 2.0),
    (0.5, 3.0),
    (0.75, 1.0),
    (0.75, 2.0),
    (0.75, 3.0),
    (1.0, 3.0),
]


def main(split: str, dataset: str) -> None:
    cfg = Config.load("configs/full.toml", dataset=dataset, collab_norm=0.0, collab_weight=1.0)
    data = prepare_data(cfg, pathlib.Path(f"runs/score_grid/{dataset}"))
    policy, tok = build_policy(cfg, data)
    policy.eval()
    p0, q0 = policy.collab_p.clone(), policy.collab_q.clone()
    mentions = cooccurrence_counts(data.train, data.catalog)[1]
    index = {i: n for n, i in enumerate(data.catalog.ids())}
    dialogues = data.real_valid if split == "valid" else data.real_test
    final = dataset == "opendialkg"  # its evaluation protocol: each dialogue's final turn
    sets = {d: real_samples(dialogues, data.catalog, dedup=d, final_only=final) for d in (False, True)}
    print(f"{split}: {len(sets[False])} / {len(sets[True])} samples", flush=True)
    for alpha, weight in GRID:
        policy.collab_p.copy_(p0 * torch.pow(1 + mentions, -alpha)[:, None])
        policy.collab_q.copy_(q0 * weight)
        r = [recall(policy, queries(policy, tok, sets[d], index, cfg, hidden=False), dedup=d) for d in (False, True)]
        mean = sum(r) / 2
        print(f"collab_norm={alpha} collab_weight={weight}: {r[0]:.3f} / {r[1]:.3f} (mean {mean:.3f})", flush=True)


if __name__ == "__main__":
    with torch.no_grad():
        main(sys.argv[1] if len(sys.argv) > 1 else "valid", sys.argv[2] if len(sys.argv) > 2 else "redial")
