"""The neighbour bonus on top of the tuned ReDial policy's item score (co-occurrence, prior, genre
and people cues: ``Config.load``), chosen on 5-fold cross-validation over the training dialogues
pooled with the validation dialogues (as docs/results/cv-tune-2026-12-01). The library's own
policy (no LM forward: ``hidden=False``, exact while the item rows are zero) and
:class:`~crs_fast.crs.rlhf.neighbours.NeighbourBonus` (keys from each fold's training dialogues).

    python docs/results/ctx-knn-2026-12-01/cv_knn.py

Recall@10 standard / dedup per (weight, K, tau), pooled and on valid; the paired dialogue-level
bootstrap 95% interval of the best against weight 0. Writes ``cv_knn.json`` next to this file.
"""

import dataclasses
import itertools
import json
import pathlib

import torch

from crs_fast.crs.rlhf.build import _encoder, build_policy
from crs_fast.crs.rlhf.config import Config
from crs_fast.crs.rlhf.corpus import choice_folds, prepare_data
from crs_fast.crs.rlhf.evaluate import cluster_bootstrap_diff, real_samples
from crs_fast.crs.rlhf.item_fit import _marks, item_logits, queries
from crs_fast.crs.rlhf.mention import scatter_bonus
from crs_fast.crs.rlhf.neighbours import build_neighbours, context_text

HERE = pathlib.Path(__file__).parent
WEIGHTS = [0.0, 0.25, 0.5, 0.75, 1.0, 1.5]
KS = [100, 200, 400]
TAUS = [0.1, 0.2]


def main() -> None:
    cfg = Config.load(None, dataset="redial")
    data = prepare_data(cfg, pathlib.Path("runs/cv_knn/redial"))
    index = {i: n for n, i in enumerate(data.catalog.ids())}
    folds = choice_folds(data)  # valid, then 5 folds of the training dialogues
    enc = _encoder().encode
    hits: dict[tuple, dict[bool, list[float]]] = {}
    groups: dict[bool, list[str]] = {False: [], True: []}
    valid_n: dict[bool, int] = {}
    for name, train, dialogues in folds:
        policy, tok = build_policy(cfg, dataclasses.replace(data, train=train))
        policy.eval()
        train_real = [d for d in train if not d.id.startswith("synth")]  # as build_policy's keys
        for dedup in (False, True):
            samples = real_samples(dialogues, data.catalog, dedup=dedup)
            qs = queries(policy, tok, samples, index, cfg, hidden=False)
            base = item_logits(policy, qs)
            if dedup:
                base = base.masked_fill(_marks(qs.banned, base.shape[1]).bool(), float("-inf"))
            t = qs.target[:, None]
            texts = [context_text(s.prompt, data.catalog, cfg.knn_turns) for s in samples]
            for k, tau in itertools.product(KS, TAUS):
                nb = build_neighbours(
                    tok, data.catalog, train_real, enc, dataclasses.replace(cfg, knn_weight=1.0, knn_k=k, knn_tau=tau)
                )
                found = nb.scores(texts)
                width = max(len(i) for i, _ in found)
                items = torch.full((len(found), width), -1, dtype=torch.int64)
                ws = torch.zeros(len(found), width)
                for n, (i, w) in enumerate(found):
                    items[n, : len(i)], ws[n, : len(i)] = i, w
                knn = scatter_bonus(items, ws, base.shape[1])
                for wgt in WEIGHTS:
                    if wgt == 0 and (k, tau) != (KS[0], TAUS[0]):
                        continue
                    x = base + wgt * knn
                    hit = ((x >= x.gather(1, t)).sum(1) - 1) < 10
                    key = (0.0, 0, 0.0) if wgt == 0 else (wgt, k, tau)
                    hits.setdefault(key, {False: [], True: []})[dedup].extend(hit.float().tolist())
            groups[dedup].extend(f"{name}:{s.group}" for s in samples)
            if name == "valid":
                valid_n[dedup] = len(samples)
        print(f"{name}: {len(groups[False])} / {len(groups[True])} samples so far", flush=True)
    table = []
    for key, v in hits.items():
        pooled = [sum(v[d]) / len(v[d]) for d in (False, True)]
        val = [sum(v[d][: valid_n[d]]) / valid_n[d] for d in (False, True)]
        table.append((list(key), *pooled, *val))
    table.sort(key=lambda r: -(r[1] + r[2]))
    print("weight K tau: pooled standard / dedup, valid standard / dedup")
    for r in [next(x for x in table if x[0][0] == 0)] + table[:12]:
        print(f"{r[0]}  {r[1]:.3f} / {r[2]:.3f}   {r[3]:.3f} / {r[4]:.3f}")
    best = tuple(table[0][0])
    diffs = {d: cluster_bootstrap_diff(hits[(0.0, 0, 0.0)][d], hits[best][d], groups[d]) for d in (False, True)}
    for d, r in diffs.items():
        print(f"best - none, {'dedup' if d else 'standard'}: {r['diff']:+.4f} ({r['lo']:+.4f} .. {r['hi']:+.4f})")
    for d in (False, True):  # on valid alone
        n = valid_n[d]
        r = cluster_bootstrap_diff(hits[(0.0, 0, 0.0)][d][:n], hits[best][d][:n], groups[d][:n])
        print(f"  valid only, {'dedup' if d else 'standard'}: {r['diff']:+.4f} ({r['lo']:+.4f} .. {r['hi']:+.4f})")
    out = {"n": {str(d): len(g) for d, g in groups.items()}, "valid_n": valid_n, "table": table}
    out["best_minus_none"] = {str(d): v for d, v in diffs.items()}
    (HERE / "cv_knn.json").write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    with torch.no_grad():
        main()
