"""The untrained policy's item ranking on a real dataset's dialogues with the people bonus (the
library's own code, no LM forward: exact while the item rows are zero).

    python docs/results/people-cues-2026-12-01/policy_people.py [valid|test] [redial|opendialkg]

The dataset's settings of ``configs/full.toml`` with ``people_cues = 1``; the bonus is then scaled
in place (the queries' ``named_w``) to each ``nu``. Prints how many people the matcher knows, the
share of prompts naming one, and Recall@10 standard / dedup per ``nu``. Run on ``valid`` to
choose; ``test`` only to report the chosen setting.
"""

import dataclasses
import pathlib
import sys

import torch

from crs_fast.crs.rlhf.build import build_policy
from crs_fast.crs.rlhf.config import Config
from crs_fast.crs.rlhf.corpus import prepare_data
from crs_fast.crs.rlhf.evaluate import real_samples
from crs_fast.crs.rlhf.item_fit import queries, recall

NU = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0]


def main(split: str, dataset: str) -> None:
    cfg = Config.load("configs/full.toml", dataset=dataset, people_cues=1.0)
    data = prepare_data(cfg, pathlib.Path(f"runs/score_grid/{dataset}"))
    policy, tok = build_policy(cfg, data)
    policy.eval()
    index = {i: n for n, i in enumerate(data.catalog.ids())}
    dialogues = data.real_valid if split == "valid" else data.real_test
    final = dataset == "opendialkg"  # its evaluation protocol: each dialogue's final turn
    sets = {d: real_samples(dialogues, data.catalog, dedup=d, final_only=final) for d in (False, True)}
    qs = {d: queries(policy, tok, sets[d], index, cfg, hidden=False) for d in (False, True)}
    n_people = int(policy.people.person.max()) + 1
    share = float((qs[False].named >= 0).any(1).float().mean())
    print(
        f"{split}: {len(sets[False])} / {len(sets[True])} samples; {n_people} people matchable "
        f"({len(policy.people.key)} token sequences); {share:.2f} of prompts name one"
    )
    for nu in NU:
        r = [recall(policy, dataclasses.replace(qs[d], named_w=qs[d].named_w * nu), dedup=d) for d in (False, True)]
        print(f"people_cues={nu}: {r[0]:.3f} / {r[1]:.3f} (mean {sum(r) / 2:.3f})", flush=True)


if __name__ == "__main__":
    with torch.no_grad():
        main(sys.argv[1] if len(sys.argv) > 1 else "valid", sys.argv[2] if len(sys.argv) > 2 else "redial")
