"""The untrained policy's item score, its scalars chosen on far more held-out samples than ReDial's
100 validation dialogues: 5-fold cross-validation over the 1,450 training dialogues (each fold's
co-occurrence counts, factors and prior from the other four folds and the synthetic dialogues)
pooled with the validation dialogues (counts from all the training dialogues). No LM forward: the
library's own policy and queries (``hidden=False``, exact while the item rows are zero).

    python docs/results/cv-tune-2026-12-01/cv_score.py [rank]

Score of item ``i`` = ``prior * log(1 + m_i) + w * (sum_c g^age_c (1 + m_c)^-a P_c) . Q_i +
genre * cues_i + people * named_i (+ 3 [i mentioned], standard only)``; ``prior_kind = system``
uses the times the recommender brought the item up instead of ``m_i``. Recall@10 per setting,
standard and dedup, pooled over the folds; the best by their mean and the paired dialogue-level
bootstrap 95% interval against the tuned setting. Writes ``cv_<rank>.json`` next to this file.
"""

import dataclasses
import itertools
import json
import pathlib
import sys

import torch

from crs_fast.crs.rlhf.build import build_policy
from crs_fast.crs.rlhf.config import Config
from crs_fast.crs.rlhf.corpus import choice_folds, prepare_data
from crs_fast.crs.rlhf.evaluate import cluster_bootstrap_diff, real_samples
from crs_fast.crs.rlhf.item_fit import _marks, queries
from crs_fast.crs.rlhf.mention import scatter_bonus

HERE = pathlib.Path(__file__).parent
TUNED = {"a": 0.5, "g": 0.7, "w": 2.0, "prior": 0.1, "kind": "all", "genre": 0.25, "people": 1.5}
GRID = {
    "a": [0.25, 0.5, 0.75],
    "g": [1.0, 0.7, 0.5],
    "w": [1.0, 2.0, 3.0],
    "prior": [0.05, 0.1, 0.2],
    "kind": ["all", "system"],
    "genre": [0.25, 0.5],
    "people": [1.5, 3.0],
}


def system_mentions(dialogues, index) -> torch.Tensor:
    """[I]: the dialogues in which the recommender mentions each item."""
    c = torch.zeros(len(index))
    for d in dialogues:
        items = {index[i] for t in d.turns if t.role == "system" for i in t.items if i in index}
        c[list(items)] += 1
    return c


def fold_hits(cfg, data, train, dialogues, settings, rank):
    """{setting: {dedup: [hit per sample]}} and the samples' dialogue ids, for ``dialogues`` scored
    with counts from ``train``."""
    dd = dataclasses.replace(data, train=train)
    policy, tok = build_policy(cfg, dd)
    policy.eval()
    index = {i: n for n, i in enumerate(data.catalog.ids())}
    p0 = policy.collab_p.clone()
    from crs_fast.crs.rlhf.collab import cooccurrence_counts

    mentions = cooccurrence_counts(train, data.catalog)[1]
    priors = {"all": torch.log1p(mentions), "system": torch.log1p(system_mentions(train, index))}
    out, groups = {}, {}
    for dedup in (False, True):
        samples = real_samples(dialogues, data.catalog, dedup=dedup)
        groups[dedup] = [s.group for s in samples]
        t = torch.tensor([index[s.target] for s in samples])
        collab = {}
        for a, g in itertools.product(GRID["a"], GRID["g"]):
            policy.collab_p.copy_(p0 * torch.pow(1 + mentions, -a)[:, None])
            policy.collab_decay = g
            qs = queries(policy, tok, samples, index, cfg, hidden=False)
            rows = policy.item_rows().float()
            h = qs.q.shape[1] - policy.item_bias_dims()
            r = policy.collab_p.shape[1]
            q = qs.q[qs.prompt]
            collab[a, g] = q[:, h + 1 : h + 1 + r] @ rows[:, h + 1 : h + 1 + r].T
        cues = q[:, h + 1 + r :] @ rows[:, h + 1 + r :].T
        people = scatter_bonus(qs.named[qs.prompt], qs.named_w[qs.prompt], rows.shape[0])
        fixed = torch.zeros_like(cues) if dedup else 3.0 * _marks(qs.ment[qs.prompt], rows.shape[0])
        banned = _marks(qs.banned, rows.shape[0]).bool() if dedup else None
        for s in settings:
            x = collab[s["a"], s["g"]] * s["w"] + s["prior"] * priors[s["kind"]] + s["genre"] * cues
            x = x + s["people"] * people + fixed
            if banned is not None:
                x = x.masked_fill(banned, float("-inf"))
            tgt = x.gather(1, t[:, None])
            hit = ((x >= tgt).sum(1) - 1) < 10
            out.setdefault(key(s), {})[dedup] = hit.float().tolist()
    return out, groups


def key(s) -> str:
    return " ".join(f"{k}={v}" for k, v in s.items())


def main(rank: int) -> None:
    cfg = Config.load(
        None,
        dataset="redial",
        collab_rank=rank,
        collab_norm=0.0,
        collab_weight=1.0,
        item_prior=1.0,
        genre_cues=1.0,
        people_cues=1.0,
    )
    data = prepare_data(cfg, pathlib.Path("runs/cv_score/redial"))
    settings = [dict(zip(GRID, v, strict=True)) for v in itertools.product(*GRID.values())]
    folds = choice_folds(data)  # valid, then 5 folds of the training dialogues
    hits: dict[str, dict[bool, list[float]]] = {}
    groups: dict[bool, list[str]] = {False: [], True: []}
    valid_n: dict[bool, int] = {}
    for name, train, dialogues in folds:
        h, g = fold_hits(cfg, data, train, dialogues, settings, rank)
        for k, v in h.items():
            for dd in (False, True):
                hits.setdefault(k, {False: [], True: []})[dd].extend(v[dd])
        for dd in (False, True):
            groups[dd].extend(f"{name}:{x}" for x in g[dd])
            if name == "valid":
                valid_n[dd] = len(g[dd])
        print(f"{name}: {len(g[False])} / {len(g[True])} samples", flush=True)
    ref = key(TUNED)
    table = []
    for k, v in hits.items():
        mean = {dd: sum(v[dd]) / len(v[dd]) for dd in (False, True)}
        val = {dd: sum(v[dd][: valid_n[dd]]) / valid_n[dd] for dd in (False, True)}
        table.append((k, mean[False], mean[True], val[False], val[True]))
    table.sort(key=lambda r: -(r[1] + r[2]))
    print(f"pooled n = {len(groups[False])} / {len(groups[True])}; columns: pooled std / dedup, valid std / dedup")
    for r in [next(x for x in table if x[0] == ref)] + table[:15]:
        print(f"{r[0]:70s} {r[1]:.3f} / {r[2]:.3f}   {r[3]:.3f} / {r[4]:.3f}")
    best = table[0][0]
    diffs = {dd: cluster_bootstrap_diff(hits[ref][dd], hits[best][dd], groups[dd]) for dd in (False, True)}
    show = {
        ("dedup" if dd else "standard"): tuple(round(d[x], 4) for x in ("diff", "lo", "hi")) for dd, d in diffs.items()
    }
    print("best - tuned:", show)
    (HERE / f"cv_{rank}.json").write_text(
        json.dumps(
            {
                "rank": rank,
                "n": {str(k): len(v) for k, v in groups.items()},
                "valid_n": valid_n,
                "table": table,
                "best_minus_tuned": {str(k): v for k, v in diffs.items()},
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    with torch.no_grad():
        main(int(sys.argv[1]) if len(sys.argv) > 1 else 64)
