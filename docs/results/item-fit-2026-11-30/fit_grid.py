"""The item fit's settings on ReDial's validation dialogues (nothing here reads the test set).

    python docs/results/item-fit-2026-11-30/fit_grid.py RUN_DIR [--stage sft] [--contexts N]

Loads the run's ``stage`` policy, computes the queries of the real training contexts and of the
validation samples once (cached in RUN_DIR/item_fit_queries.pt), then fits the item parts from
that policy's for each setting of the grid and prints each epoch's validation figures (the fit's
own choice: the mean of standard and dedup Recall@10), plus the chosen epoch.
"""

import argparse
import itertools
import pathlib
import time

import torch

from crs_fast.crs.rlhf.build import build_policy
from crs_fast.crs.rlhf.config import Config
from crs_fast.crs.rlhf.corpus import prepare_data
from crs_fast.crs.rlhf.evaluate import real_samples
from crs_fast.crs.rlhf.item_fit import ITEM_PARTS, Queries, draw_contexts, fit_items, queries, split
from crs_fast.crs.rlhf.run_io import load_policy


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out", type=pathlib.Path)
    ap.add_argument("--stage", default="sft")
    ap.add_argument("--contexts", type=int, default=0)
    ap.add_argument("--lr", default="1e-3,3e-3")
    ap.add_argument("--wd", default="0,0.1")
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--opt", default="sgd")
    ap.add_argument("--reset", action="store_true", help="item rows and attribute embeddings from zero")
    ap.add_argument("--parts", default=",".join(ITEM_PARTS), help="the item parameters that train")
    a = ap.parse_args()
    torch.set_num_threads(2)
    cfg = Config.load("configs/full.toml", dataset="redial")
    data = prepare_data(cfg, a.out / "data")
    policy, tok = build_policy(cfg, data)
    if a.stage != "base":
        load_policy(policy, a.out / a.stage / "policy.safetensors")
    policy.eval()
    cache = a.out / f"item_fit_queries_{a.stage}_{a.contexts}.pt"
    index = {i: n for n, i in enumerate(data.catalog.ids())}
    if cache.exists():
        sets = [Queries(**d) for d in torch.load(cache)]
    else:
        real = [d for d in data.train if not d.id.startswith("synth")]
        train_s = draw_contexts(real_samples(real, data.catalog, dedup=False), a.contexts, cfg.seed)
        std_s = real_samples(data.real_valid, data.catalog, dedup=False)
        ded_s = real_samples(data.real_valid, data.catalog, dedup=True)
        t0 = time.time()
        n_train = len({s.prompt for s in train_s})
        train = queries(policy, tok, train_s, index, cfg)
        t1 = time.time()
        print(f"train queries: {len(train_s)} samples, {n_train} contexts in {t1 - t0:.0f} s", flush=True)
        valid = queries(policy, tok, std_s + ded_s, index, cfg)
        print(f"valid queries in {time.time() - t1:.0f} s", flush=True)
        sets = [train, *split(valid, len(std_s))]
        torch.save([vars(s) for s in sets], cache)
    start = {n: p.detach().clone() for n, p in policy.named_parameters() if n.startswith(ITEM_PARTS)}
    print(f"train {len(sets[0])} samples, valid {len(sets[1])} / dedup {len(sets[2])}", flush=True)
    for lr, wd in itertools.product([float(x) for x in a.lr.split(",")], [float(x) for x in a.wd.split(",")]):
        with torch.no_grad():
            for n, p in policy.named_parameters():
                if n in start:
                    p.copy_(start[n])
                    if a.reset and n.startswith(("item_out", "item_attr.")):
                        p.zero_()
        c = Config.load(
            "configs/full.toml",
            dataset="redial",
            item_fit_epochs=a.epochs,
            item_fit_lr=lr,
            item_fit_wd=wd,
            item_fit_opt=a.opt,
        )
        t0 = time.time()
        hist = fit_items(policy, *sets, c, parts=tuple(a.parts.split(",")))
        rows = " ".join(f"{h['epoch']}:{h['valid_recall@10']:.3f}/{h['valid_dedup_recall@10']:.3f}" for h in hist)
        best = next(h for h in hist if h["chosen"])
        print(
            f"lr {lr:g} wd {wd:g} {a.opt} reset {a.reset} parts {a.parts}: {rows}",
            f" chosen {best['epoch']} ({time.time() - t0:.0f} s)",
            flush=True,
        )


if __name__ == "__main__":
    main()
