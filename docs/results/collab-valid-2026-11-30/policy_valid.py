"""The policy before training on a real dataset's validation dialogues, for several mention
bonuses and item priors (the settings `mention_bonus` and `item_prior` were chosen with this).

    python docs/results/collab-valid-2026-11-30/policy_valid.py redial 3 0,0.03,0.1,0.3

Arguments: dataset, mention bonuses, item priors (comma-separated). Prints Recall@10 standard and
dedup on every validation sample (the frozen trunk runs once for all settings).
"""

import itertools
import pathlib
import sys
import time

import torch

from crs_fast.crs.rlhf.build import build_policy
from crs_fast.crs.rlhf.collab import cooccurrence_counts
from crs_fast.crs.rlhf.config import Config
from crs_fast.crs.rlhf.corpus import prepare_data
from crs_fast.crs.rlhf.evaluate import TrunkCache, ranks, real_samples, top_lists


def main(ds: str, betas: list[float], priors: list[float]) -> None:
    cfg = Config(dataset=ds, **({"collab_rank": 512} if ds == "opendialkg" else {}))
    data = prepare_data(cfg, pathlib.Path(f"runs/policy_valid/{ds}"))
    policy, tok = build_policy(cfg, data)
    policy.eval()
    std_s = real_samples(data.real_valid, data.catalog, dedup=False)
    ded_s = real_samples(data.real_valid, data.catalog, dedup=True)
    extra = max(len(s.mentioned) for s in std_s + ded_s)
    trunk = TrunkCache().for_policy(policy)
    _, mentions = cooccurrence_counts(data.train, data.catalog)
    prompts = list(dict.fromkeys(s.prompt for s in std_s + ded_s))
    for beta, prior in itertools.product(betas, priors):
        t = time.time()
        with torch.no_grad():
            policy.item_repeat.fill_(beta)
            policy.item_bias.copy_(prior * torch.log1p(mentions))
        lists = top_lists(policy, tok, prompts, 50 + extra, cfg, trunk)
        std, _ = ranks(policy, tok, data.catalog, std_s, cfg, lists)
        _, ded = ranks(policy, tok, data.catalog, ded_s, cfg, lists)

        def r10(xs):
            return sum(x is not None and x < 10 for x in xs) / len(xs)

        print(
            f"{ds} beta={beta} prior={prior} n={len(std)}/{len(ded)} Recall@10 standard {r10(std):.3f} "
            f"dedup {r10(ded):.3f} ({time.time() - t:.0f} s)",
            flush=True,
        )


if __name__ == "__main__":
    main(sys.argv[1], [float(b) for b in sys.argv[2].split(",")], [float(a) for a in sys.argv[3].split(",")])
