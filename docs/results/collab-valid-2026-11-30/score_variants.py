"""Variants of the co-occurrence score on a real dataset's validation dialogues (no model).

    python docs/results/collab-valid-2026-11-30/score_variants.py redial|opendialkg

Recall@10 (standard, dedup) of ``sum_c w_c log(1 + n(c, i)) / (1 + pop_c)^norm + alpha log(1 +
pop_i) + beta [i mentioned]`` (``w_c = gamma^age``, most recent mention first) against the
``cooccurrence`` baseline (real training dialogues, popularity breaking ties), with the paired
dialogue-level bootstrap 95% interval of the difference. Counts from the real training dialogues
(baseline) or all of them ("all": with the synthetic ones, as the policy's factors).
"""

import pathlib
import random
import sys

import torch

from crs_fast.crs.rlhf.collab import cooccurrence_counts
from crs_fast.crs.rlhf.config import Config
from crs_fast.crs.rlhf.corpus import prepare_data
from crs_fast.crs.rlhf.evaluate import real_samples


def main(ds: str) -> None:
    data = prepare_data(Config(dataset=ds), pathlib.Path(f"runs/score_variants/{ds}"))
    cat = data.catalog
    index = {i: n for n, i in enumerate(cat.ids())}
    real_train = [d for d in data.train if not d.id.startswith("synth")]

    def dense(dialogues):
        n, pop = cooccurrence_counts(dialogues, cat)
        return torch.log1p(n.to_dense()), pop

    l_real, pop_real = dense(real_train)
    l_all, pop_all = dense(data.train)

    def score(big_l, pop, gamma=1.0, alpha=0.0, beta=0.0, norm=0.0):
        def f(m: list[int]) -> torch.Tensor:
            sc = pop / (pop.max() * 1e3) + alpha * torch.log1p(pop)
            if m:
                w = torch.tensor([gamma**k for k in range(len(m))][::-1])
                rows = big_l[m] / (1 + pop[m])[:, None] ** norm
                sc = sc + (w[:, None] * rows).sum(0)
                sc[m] += beta * w
            return sc

        return f

    def hits(f, samples, dedup: bool) -> list[float]:
        out = []
        for s in samples:
            m = [index[x] for x in s.mentioned if x in index]
            sc = f(m).clone()
            if dedup and m:
                sc[m] = -1e9
            out.append(float((sc > sc[index[s.target]]).sum().item() < 10))
        return out

    def boot(a, b, groups, n=1000):
        per: dict[str, list[float]] = {}
        for x, y, g in zip(a, b, groups, strict=True):
            acc = per.setdefault(g, [0.0, 0.0])
            acc[0] += y - x
            acc[1] += 1
        rows = list(per.values())
        rng = random.Random(0)
        means = sorted(
            sum(d for d, _ in draw) / sum(c for _, c in draw)
            for draw in ([rows[rng.randrange(len(rows))] for _ in rows] for _ in range(n))
        )
        return means[25], means[975]

    for dedup in (False, True):
        samples = real_samples(data.real_valid, cat, dedup=dedup)
        groups = [s.group for s in samples]
        base = hits(score(l_real, pop_real), samples, dedup)
        print(f"dedup={dedup} n={len(samples)} baseline {sum(base) / len(samples):.3f}")
        variants = {
            "all": score(l_all, pop_all),
            **{f"all gamma={g}": score(l_all, pop_all, gamma=g) for g in (0.5, 0.7, 0.85)},
            **{f"all alpha={a}": score(l_all, pop_all, alpha=a) for a in (0.1, 0.3, 0.6)},
            **{f"all norm={q}": score(l_all, pop_all, norm=q) for q in (0.25, 0.5, 0.75, 1.0)},
            **{f"all beta={b}": score(l_all, pop_all, beta=b) for b in (1, 3, 10)},
        }
        for name, f in variants.items():
            h = hits(f, samples, dedup)
            lo, hi = boot(base, h, groups)
            diff = (sum(h) - sum(base)) / len(samples)
            print(f"  {name:18s} {sum(h) / len(samples):.3f}  diff {diff:+.3f} [{lo:+.3f}, {hi:+.3f}]", flush=True)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "redial")
