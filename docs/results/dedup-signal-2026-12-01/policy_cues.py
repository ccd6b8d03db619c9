"""The untrained policy's item ranking on a real dataset's validation dialogues with recency weighting
and genre cues (the library's own code, no LM forward: exact while the item rows are zero).

    python docs/results/dedup-signal-2026-12-01/policy_cues.py [valid|test] [redial|opendialkg]

The dataset's settings of ``configs/full.toml`` (rank, prior). Builds the policy once
(``collab_decay``, ``genre_cues`` on) and varies both in place; prints Recall@10 standard /
dedup per setting and the share of prompts whose tokens name a genre. Run on ``valid`` to
choose; ``test`` only to report the chosen setting.
"""

import pathlib
import sys

import torch

from crs_fast.crs.rlhf.build import build_policy
from crs_fast.crs.rlhf.config import Config
from crs_fast.crs.rlhf.corpus import prepare_data
from crs_fast.crs.rlhf.evaluate import real_samples
from crs_fast.crs.rlhf.item_fit import queries, recall

SETTINGS = [(1.0, 0.0), (0.7, 0.0), (1.0, 0.25), (0.7, 0.25), (0.7, 0.5), (0.5, 0.25), (0.7, 0.125)]


def main(split: str, dataset: str) -> None:
    cfg = Config.load("configs/full.toml", dataset=dataset, collab_decay=0.7, genre_cues=1.0)
    data = prepare_data(cfg, pathlib.Path(f"runs/score_grid/{dataset}"))
    policy, tok = build_policy(cfg, data)
    policy.eval()
    index = {i: n for n, i in enumerate(data.catalog.ids())}
    dialogues = data.real_valid if split == "valid" else data.real_test
    cues = policy.cue_cols.clone()
    final = dataset == "opendialkg"  # its evaluation protocol: each dialogue's final turn
    sets = {d: real_samples(dialogues, data.catalog, dedup=d, final_only=final) for d in (False, True)}
    prompts = list(dict.fromkeys(s.prompt for s in sets[False]))
    named = sum(bool((policy.token_cue[tok(p)["input_ids"]] >= 0).any()) for p in prompts) / len(prompts)
    print(f"{split}: {len(sets[False])} / {len(sets[True])} samples; {named:.2f} of prompts name a genre")
    for decay, weight in SETTINGS:
        policy.collab_decay = decay
        policy.cue_cols = cues * weight
        r = [recall(policy, queries(policy, tok, sets[d], index, cfg, hidden=False), dedup=d) for d in (False, True)]
        print(f"collab_decay={decay} genre_cues={weight}: {r[0]:.3f} / {r[1]:.3f} (mean {sum(r) / 2:.3f})", flush=True)


if __name__ == "__main__":
    with torch.no_grad():
        main(sys.argv[1] if len(sys.argv) > 1 else "valid", sys.argv[2] if len(sys.argv) > 2 else "redial")
