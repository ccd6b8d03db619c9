"""EASE item-item weights (Steck 2019) against the co-occurrence score the policy uses, on the score
alone (no model), on ReDial's validation dialogues and by 5-fold cross-validation over its training
dialogues (counts from the other four folds).

    python docs/results/ease-2026-12-01/score_ease.py [redial|opendialkg]

Reference: the tuned policy's item score without its text part,
``sum_c g^age_c (1 + m_c)^-a w log(1 + n(c, i)) + prior log(1 + m_i)``.
EASE: ``X`` the dialogue x item 0/1 matrix of the training dialogues, ``G = X^T X + lam I``,
``B = I - G^-1 diag(1 / diag(G^-1))`` (zero diagonal); a context's score ``sum_c g^age_c B[c, i]``.
Variants replace the co-occurrence rows by ``B`` (scaled to the same mean top-10 magnitude) or add it.
Recall@10 standard / dedup, paired dialogue-level bootstrap 95% interval against the reference.
"""

import pathlib
import random
import sys

import torch

from crs_fast.crs.data.splits import rec_samples
from crs_fast.crs.rlhf.collab import cooccurrence_counts
from crs_fast.crs.rlhf.config import Config
from crs_fast.crs.rlhf.corpus import prepare_data
from crs_fast.crs.rlhf.evaluate import cluster_bootstrap_diff


def ease(dialogues, index: dict[str, int], lam: float) -> torch.Tensor:
    """[I, I] EASE weights from the training ``dialogues`` (each dialogue's items once)."""
    x = torch.zeros(len(dialogues), len(index))
    for r, d in enumerate(dialogues):
        items = {index[i] for t in d.turns for i in t.items if i in index}
        x[r, list(items)] = 1.0
    g = (x.T @ x).double()
    g.diagonal().add_(lam)
    p = torch.linalg.inv(g)
    b = -p / p.diagonal()[None, :]
    b.fill_diagonal_(0)
    return b.float()


def context_items(context, index):
    out: list[int] = []
    for t in context:
        for x in t.items:
            if x in index and index[x] not in out:
                out.append(index[x])
    return out


def main(ds: str) -> None:
    cfg = Config.load(None, dataset=ds)
    data = prepare_data(cfg, pathlib.Path(f"runs/score_ease/{ds}"))
    index = {i: n for n, i in enumerate(data.catalog.ids())}
    lams = [float(v) for v in (sys.argv[2].split(",") if len(sys.argv) > 2 else ["1", "3", "10", "30", "100"])]

    def setting(train):
        n, pop = cooccurrence_counts(train, data.catalog)
        big_l = torch.log1p(n.to_dense())
        damp = (1 + pop) ** -cfg.collab_norm
        base = cfg.item_prior * torch.log1p(pop) + pop / (pop.max() * 1e3)
        eases = {lam: ease(train, index, lam) for lam in lams}
        return big_l, damp, base, eases

    def hits(samples, dedup, st, kind, lam=None, mix=0.0):
        big_l, damp, base, eases = st
        out = []
        for s in samples:
            m = context_items(s.context, index)
            sc = base.clone()
            if m:
                w = torch.tensor([cfg.collab_decay ** (len(m) - 1 - k) for k in range(len(m))])
                ref = cfg.collab_weight * ((w * damp[m])[:, None] * big_l[m]).sum(0)
                if kind == "ref":
                    sc = sc + ref
                else:
                    e = (w[:, None] * eases[lam][m]).sum(0)
                    # EASE on the scale of the reference: same mean over each context's top 10
                    scale = ref.topk(10).values.mean() / e.topk(10).values.mean().clamp(min=1e-9)
                    sc = sc + (1 - mix) * scale * e + mix * ref if kind == "ease" else sc + ref + mix * scale * e
                if dedup:
                    sc[m] = -1e9
            out.append(float((sc > sc[index[s.targets[0]]]).sum().item() < 10))
        return out

    variants = {f"ease lam={lam}": ("ease", lam, 0.0) for lam in lams}
    variants.update({f"ease lam={lam} mix 0.5": ("ease", lam, 0.5) for lam in lams})
    variants.update({f"ref + 0.5 ease lam={lam}": ("add", lam, 0.5) for lam in lams})

    folds: list[tuple[str, list, object]] = [("valid", data.real_valid, setting(data.train))]
    if ds == "redial":  # the training dialogues of the data's own source, 5 folds
        train = [d for d in data.train if not d.id.startswith("synth")]
        random.Random(0).shuffle(train)
        for f in range(5):
            held = train[f::5]
            out = {d.id for d in held}
            rest = [d for d in data.train if d.id not in out]
            folds.append((f"cv{f}", held, setting(rest)))
    for dedup in (False, True):
        pooled: dict[str, list[float]] = {}
        groups_all: list[str] = []
        for name, dialogues, st in folds:
            samples = [s for s in rec_samples(dialogues, dedup=dedup) if s.targets[0] in index]
            groups = [f"{name}:{s.dialogue_id}" for s in samples]
            ref = hits(samples, dedup, st, "ref")
            pooled.setdefault("ref", []).extend(ref)
            if name == "valid":
                print(f"dedup={dedup} valid n={len(samples)} reference {sum(ref) / len(ref):.3f}", flush=True)
            for v, (kind, lam, mix) in variants.items():
                h = hits(samples, dedup, st, kind, lam, mix)
                pooled.setdefault(v, []).extend(h)
                if name == "valid":
                    r = cluster_bootstrap_diff(ref, h, groups)
                    print(f"  {v:26s} {sum(h) / len(h):.3f}  diff {r['diff']:+.3f} [{r['lo']:+.3f}, {r['hi']:+.3f}]")
            if name != "valid":
                groups_all.extend(groups)
        if len(folds) > 1:
            nv = len(pooled["ref"]) - len(groups_all)
            ref = pooled["ref"][nv:]
            print(f"dedup={dedup} train 5-fold n={len(ref)} reference {sum(ref) / len(ref):.3f}", flush=True)
            for v in variants:
                h = pooled[v][nv:]
                r = cluster_bootstrap_diff(ref, h, groups_all)
                print(f"  {v:26s} {sum(h) / len(h):.3f}  diff {r['diff']:+.3f} [{r['lo']:+.3f}, {r['hi']:+.3f}]")


if __name__ == "__main__":
    with torch.no_grad():
        main(sys.argv[1] if len(sys.argv) > 1 else "redial")
