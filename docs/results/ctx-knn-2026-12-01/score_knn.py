"""What recommenders answered to similar requests: a nearest-neighbour signal over the training
dialogues' recommendation contexts, on the score alone (no policy), on ReDial's validation
dialogues and by 5-fold cross-validation over its training dialogues.

    python docs/results/ctx-knn-2026-12-01/score_knn.py [turns]

Each training sample (a recommender turn's ground-truth item and the ``turns`` context turns
before it, item mentions shown as titles) is embedded by the sentence encoder (MiniLM). A held-out
context's knn score of item ``i`` is ``sum_{j in top K} exp(sim_j / tau) [target_j = i]`` over its
``K`` most similar training samples (other folds only). Reference: the tuned co-occurrence score
``sum_c g^age_c (1 + m_c)^-a w log(1 + n(c, i)) + prior log(1 + m_i)`` (counts from the training
folds). Prints Recall@10 standard / dedup of knn alone and of ``reference + lam * knn / max knn``
with the paired dialogue-level bootstrap 95% interval against the reference.
"""

import pathlib
import random
import sys

import torch

from crs_fast.crs.data.splits import rec_samples
from crs_fast.crs.rlhf.collab import cooccurrence_counts
from crs_fast.crs.rlhf.config import Config
from crs_fast.crs.rlhf.corpus import prepare_data, turn_text
from crs_fast.crs.rlhf.encoder import SentenceEncoder
from crs_fast.crs.rlhf.evaluate import cluster_bootstrap_diff
from crs_fast.crs.rlhf.lm import render


def main(turns: int) -> None:
    cfg = Config.load(None, dataset="redial")
    data = prepare_data(cfg, pathlib.Path("runs/score_knn/redial"))
    cat = data.catalog
    index = {i: n for n, i in enumerate(cat.ids())}
    real = [d for d in data.train if not d.id.startswith("synth")]
    random.Random(0).shuffle(real)
    fold_of = {d.id: f % 5 for f, d in enumerate(real)}
    synth = [d for d in data.train if d.id.startswith("synth")]

    def text(context) -> str:  # the most recent turns first: the encoder keeps the first 128 tokens
        lines = [f"{'User' if t.role == 'user' else 'System'}: {render(turn_text(t, cat), cat)}" for t in context]
        return " ".join(reversed(lines[-turns:]))

    enc = SentenceEncoder()
    tr = [s for d in real for s in rec_samples([d], dedup=False) if s.targets[0] in index]
    tr_t = torch.tensor([index[s.targets[0]] for s in tr])
    tr_f = torch.tensor([fold_of[s.dialogue_id] if hasattr(s, "dialogue_id") else 0 for s in tr])
    tr_e = enc.encode([text(s.context) for s in tr])
    print(f"{len(tr)} training samples encoded", flush=True)

    def counts(train):
        n, pop = cooccurrence_counts(train, cat)
        return torch.log1p(n.to_dense()), (1 + pop) ** -cfg.collab_norm, cfg.item_prior * torch.log1p(pop)

    def ref_score(ctx, st):
        big_l, damp, prior = st
        m: list[int] = []
        for t in ctx:
            for x in t.items:
                if x in index and index[x] not in m:
                    m.append(index[x])
        sc = prior.clone()
        if m:
            w = torch.tensor([cfg.collab_decay ** (len(m) - 1 - k) for k in range(len(m))]) * damp[m]
            sc = sc + cfg.collab_weight * (w[:, None] * big_l[m]).sum(0)
        return sc, m

    sets = [("valid", data.real_valid, None)]
    for f in range(5):
        sets.append((f"cv{f}", [d for d in real if fold_of[d.id] == f], f))
    variants = [(k, tau) for k in (20, 50, 200) for tau in (0.05, 0.1)]
    lams = (0.5, 1.0, 2.0, 4.0)
    for dedup in (False, True):
        res: dict[str, list[float]] = {}
        groups: list[str] = []
        for name, dialogues, fold in sets:
            train = data.train if fold is None else synth + [d for d in real if fold_of[d.id] != fold]
            st = counts(train)
            samples = [s for s in rec_samples(dialogues, dedup=dedup) if s.targets[0] in index]
            emb = enc.encode([text(s.context) for s in samples])
            sims = emb @ tr_e.T
            if fold is not None:
                sims[:, tr_f == fold] = -2.0
            groups += [f"{name}:{getattr(s, 'dialogue_id', id(s))}" for s in samples]
            for n_s, s in enumerate(samples):
                ref, m = ref_score(s.context, st)
                t = index[s.targets[0]]
                outs = {"reference": ref}
                for k, tau in variants:
                    v, j = sims[n_s].topk(k)
                    knn = torch.zeros(len(index)).index_add_(0, tr_t[j], torch.exp((v - v[0]) / tau))
                    outs[f"knn k={k} tau={tau}"] = knn + ref * 1e-6
                    for lam in lams:
                        outs[f"ref + {lam} knn k={k} tau={tau}"] = ref + lam * knn / knn.max()
                for key, sc in outs.items():
                    if dedup and m:
                        sc = sc.clone()
                        sc[m] = -1e9
                    res.setdefault(key, []).append(float((sc > sc[t]).sum().item() < 10))
            if name == "valid":
                nv = len(groups)
        ref = res["reference"]
        for part, sl in (("valid", slice(0, nv)), ("5-fold", slice(nv, None))):
            r0 = ref[sl]
            print(f"dedup={dedup} {part} n={len(r0)} reference {sum(r0) / len(r0):.3f}", flush=True)
            for key, h in res.items():
                if key == "reference":
                    continue
                d = cluster_bootstrap_diff(r0, h[sl], groups[sl])
                print(f"  {key:32s} {sum(h[sl]) / len(r0):.3f} diff {d['diff']:+.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}]")


if __name__ == "__main__":
    with torch.no_grad():
        main(int(sys.argv[1]) if len(sys.argv) > 1 else 3)
