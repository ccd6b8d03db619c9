"""Two signals the policy's co-occurrence score lacks, measured on the score alone (no model) on a
real dataset's validation dialogues.

    python docs/results/redial-signal-2026-12-01/score_roles.py [redial|opendialkg]

The reference is the policy's item score without its text part: ``sum_c g^age_c (1 + m_c)^-a
log(1 + n(c, i)) + prior log(1 + m_i)`` (``g = 0.7, a = 0.5``, counts over all training
dialogues, as the tuned ReDial policy). Variants:

* ``role``: a context item the recommender brought up (and the seeker may have turned down) weighs
  ``w`` (the seeker's own mentions weigh 1);
* ``directed``: ``n(c, i)`` counts only dialogues where ``i`` was first mentioned after ``c`` by the
  recommender (what gets suggested after ``c``), mixed as ``(1 - d) L + d L_dir``.

Recall@10 standard / dedup and the paired dialogue-level bootstrap 95% interval of each variant
minus the reference. Valid only: a signal that holds here is then chosen with the policy on valid.
"""

import pathlib
import sys

import torch

from crs_fast.crs.data.labels import text_sentiment
from crs_fast.crs.data.splits import rec_samples
from crs_fast.crs.rlhf.collab import cooccurrence_counts
from crs_fast.crs.rlhf.config import Config
from crs_fast.crs.rlhf.corpus import prepare_data
from crs_fast.crs.rlhf.evaluate import cluster_bootstrap_diff
from crs_fast.crs.rlhf.people import item_people


def directed_counts(dialogues, index: dict[str, int]) -> torch.Tensor:
    """[I, I] dense: dialogues in which item ``i`` was first mentioned by the recommender after ``c``."""
    n = torch.zeros(len(index), len(index))
    for d in dialogues:
        seen: list[int] = []
        pairs: set[tuple[int, int]] = set()  # each dialogue counts a pair once
        for t in d.turns:
            new = [x for x in dict.fromkeys(index[y] for y in t.items if y in index) if x not in seen]
            if t.role == "system":
                pairs.update((c, i) for c in seen for i in new)
            seen.extend(new)
        for c, i in pairs:
            n[c, i] += 1
    n.fill_diagonal_(0)
    return n


def main(ds: str) -> None:
    cfg = Config.load(None, dataset=ds)
    data = prepare_data(cfg, pathlib.Path(f"runs/score_roles/{ds}"))
    index = {i: n for n, i in enumerate(data.catalog.ids())}
    n, pop = cooccurrence_counts(data.train, data.catalog)
    big_l = torch.log1p(n.to_dense())
    dir_l = torch.log1p(directed_counts(data.train, index))
    damp = (1 + pop) ** -cfg.collab_norm
    prior = cfg.item_prior * torch.log1p(pop)

    b = item_people(data.catalog)[1]  # [I, P]: the items' directors and stars
    shared = b @ b.T  # [I, I] people two items share (weighted as the people bonus weighs them)
    shared.fill_diagonal_(0)

    def score(context, w_sys=1.0, d=0.0, w_neg=1.0, kin=0.0):
        items: list[tuple[int, str, float]] = []  # (item, role, the seeker's reaction) in first-mention order
        for k, t in enumerate(context):
            # the seeker's reaction: their own turn for their mentions, their next turn for the recommender's
            nxt = t if t.role == "user" else next((u for u in context[k + 1 :] if u.role == "user"), None)
            mood = text_sentiment(nxt.text) if nxt is not None else 0.0
            for x in t.items:
                if x in index and index[x] not in [i for i, _, _ in items]:
                    items.append((index[x], t.role, mood))
        sc = prior.clone() + pop / (pop.max() * 1e3)
        if items:
            m = [i for i, _, _ in items]
            w = torch.tensor([cfg.collab_decay ** (len(m) - 1 - k) for k in range(len(m))])
            w = w * torch.tensor([w_sys if r == "system" else 1.0 for _, r, _ in items]) * damp[m]
            w = w * torch.tensor([w_neg if mood < -0.05 else 1.0 for _, _, mood in items])
            rows = (1 - d) * big_l[m] + d * dir_l[m]
            sc = sc + cfg.collab_weight * (w[:, None] * rows).sum(0)
            if kin:
                sc = sc + kin * shared[m].sum(0)
        return sc, [i for i, _, _ in items]

    def hits(samples, dedup, **kw):
        out = []
        for s in samples:
            sc, m = score(s.context, **kw)
            if dedup and m:
                sc[m] = -1e9
            out.append(float((sc > sc[index[s.targets[0]]]).sum().item() < 10))
        return out

    variants = {f"role w={w}": {"w_sys": w} for w in (0.0, 0.25, 0.5, 1.5, 2.0)}
    variants.update({f"directed d={d}": {"d": d} for d in (0.25, 0.5, 1.0)})
    variants.update({f"negative w={w}": {"w_neg": w} for w in (0.0, 0.5, -0.5)})
    variants.update({f"shared people k={k}": {"kin": k} for k in (0.1, 0.25, 0.5, 1.0, 2.0)})
    for dedup in (False, True):
        samples = [s for s in rec_samples(data.real_valid, dedup=dedup) if s.targets[0] in index]
        groups = [s.dialogue_id for s in samples]
        ref = hits(samples, dedup)
        print(f"dedup={dedup} n={len(samples)} reference {sum(ref) / len(ref):.3f}", flush=True)
        for name, kw in variants.items():
            h = hits(samples, dedup, **kw)
            r = cluster_bootstrap_diff(ref, h, groups)
            diff, lo, hi = r["diff"], r["lo"], r["hi"]
            print(f"  {name:16s} {sum(h) / len(h):.3f}  diff {diff:+.3f} [{lo:+.3f}, {hi:+.3f}]", flush=True)


if __name__ == "__main__":
    with torch.no_grad():
        main(sys.argv[1] if len(sys.argv) > 1 else "redial")
