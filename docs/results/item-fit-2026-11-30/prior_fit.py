"""The item bias and mention bonus of the untrained policy fitted on ReDial's real training
recommendations (all 5,626 samples), early-stopped on the validation dialogues; nothing here
reads the test set.

    python docs/results/item-fit-2026-11-30/prior_fit.py RUN_DIR

The untrained policy's item rows have a zero hidden-state part, so its item scores need no LM
forward (``queries(..., hidden=False)``: only the co-occurrence features, from the tokens); each
setting fits ``item_bias`` and ``item_repeat`` from the same start and prints each epoch's
validation Recall@10 (standard / dedup).
"""

import pathlib
import sys

import torch

from crs_fast.crs.rlhf.build import build_policy
from crs_fast.crs.rlhf.config import Config
from crs_fast.crs.rlhf.corpus import prepare_data
from crs_fast.crs.rlhf.evaluate import real_samples
from crs_fast.crs.rlhf.item_fit import ITEM_PARTS, fit_items, queries, split


def main() -> None:
    out = pathlib.Path(sys.argv[1])
    cfg = Config.load("configs/full.toml", dataset="redial")
    data = prepare_data(cfg, out / "data")
    policy, tok = build_policy(cfg, data)
    policy.eval()
    real = [d for d in data.train if not d.id.startswith("synth")]
    index = {i: n for n, i in enumerate(data.catalog.ids())}
    train_s = real_samples(real, data.catalog, dedup=False)
    std_s = real_samples(data.real_valid, data.catalog, dedup=False)
    ded_s = real_samples(data.real_valid, data.catalog, dedup=True)
    train = queries(policy, tok, train_s, index, cfg, hidden=False, batch=64)
    sets = [train, *split(queries(policy, tok, std_s + ded_s, index, cfg, hidden=False, batch=64), len(std_s))]
    print(f"train {len(train_s)} samples; valid {len(std_s)} / dedup {len(ded_s)}")
    start = {n: p.detach().clone() for n, p in policy.named_parameters() if n.startswith(ITEM_PARTS)}
    for opt, lr in [("sgd", 0.1), ("sgd", 0.3), ("sgd", 1.0), ("adamw", 1e-2), ("adamw", 3e-2)]:
        with torch.no_grad():
            for n, p in policy.named_parameters():
                if n in start:
                    p.copy_(start[n])
        c = Config.load("configs/full.toml", dataset="redial", item_fit_epochs=12, item_fit_lr=lr, item_fit_opt=opt)
        hist = fit_items(policy, *sets, c, parts=("item_bias", "item_repeat"))
        cells = " ".join(f"{r['epoch']}:{r['valid_recall@10']:.3f}/{r['valid_dedup_recall@10']:.3f}" for r in hist)
        print(f"{opt} lr {lr:g}: {cells}", flush=True)


if __name__ == "__main__":
    main()
