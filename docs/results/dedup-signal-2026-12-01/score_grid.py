"""The untrained policy's item score on ReDial's validation dialogues, with candidate extra terms (no LM).

    python docs/results/dedup-signal-2026-12-01/score_grid.py [valid|test] [first|attr]

The policy before training (item rows zero) ranks items by

    prior * log(1 + pop_i) + w * (sum_{c in S} g^age_c P_c / (1 + pop_c)^a) . Q_i + beta [i in S]
        + lam * sum_{genres named in the context's words} A_{i,genre} + mu * (sum_{c in S} B_c) . B_i

with ``P, Q`` its rank-64 co-occurrence factors (all training dialogues), ``age_c`` the number of
distinct items first mentioned after ``c``, ``A_{i,g} = 1 / |genres(i)|`` for the item's genres and
the genres named by the context's words (``GENRE_WORDS``), ``B`` the items' genre / director /
star values of ``item_attribute_index`` (content similarity to the context's items).
a = 0, g = 1, lam = mu = 0 is the policy as built (prior 0.1, w 1, beta 3). Prints Recall@10
standard / dedup per setting, and the paired dialogue-level bootstrap 95% interval of the chosen
setting minus the policy as built and minus the co-occurrence baseline. Run on ``valid`` to
choose; ``test`` only to report a chosen setting.
"""

import itertools
import pathlib
import re
import sys

import torch

from crs_fast.crs.rlhf.collab import cooccurrence_counts, cooccurrence_factors
from crs_fast.crs.rlhf.config import Config
from crs_fast.crs.rlhf.corpus import prepare_data
from crs_fast.crs.rlhf.evaluate import cluster_bootstrap_diff, real_samples
from crs_fast.crs.rlhf.lm import ITEM_RE, item_attribute_index

GENRE_WORDS = {
    "comedy": r"comed(y|ies)|funny|hilarious|laugh",
    "horror": r"horror|scary|scare|creepy|slasher",
    "romance": r"romance|romantic|rom ?com|love stor(y|ies)|chick flick",
    "action": r"action",
    "adventure": r"adventure",
    "crime": r"crime|gangster|mob|heist",
    "thriller": r"thriller|suspense",
    "sci-fi": r"sci[ -]?fi|science fiction|space",
    "mystery": r"myster(y|ies)",
    "fantasy": r"fantasy",
    "family": r"family|kids|children",
    "animation": r"animat(ed|ion)|cartoon|pixar|disney",
    "drama": r"drama",
    "documentary": r"documentar(y|ies)",
    "war": r"\bwar\b",
    "western": r"western",
    "musical": r"musical",
    "sport": r"sports?",
    "biography": r"biograph(y|ies)|biopic|true story",
}


GRIDS = {  # (a, g, lam, w, mu)
    "first": list(itertools.product((0.0, 0.25, 0.5), (1.0, 0.7), (0.0, 0.5, 1.0, 2.0, 4.0), (1.0, 2.0), (0.0,))),
    # (a, g, lam, w, mu, b, prior): the item side of the co-occurrence normalised, the prior re-weighed
    "item": [(0.0, 0.7, 0.25, 1.0, 0.0, b, pr) for b in (0.0, 0.25, 0.5) for pr in (0.1, 0.2, 0.3)],
    "attr": list(itertools.product((0.0,), (1.0, 0.7, 0.5), (0.0, 0.25, 0.5), (1.0,), (0.0, 0.1, 0.3, 1.0))),
}


def main(split: str, grid: str) -> None:
    cfg = Config(dataset="redial")
    data = prepare_data(cfg, pathlib.Path("runs/score_grid/redial"))
    cat = data.catalog
    ids = cat.ids()
    index = {i: n for n, i in enumerate(ids)}
    n, pop = cooccurrence_counts(data.train, cat)
    p, q = cooccurrence_factors(data.train, cat, cfg.collab_rank, cfg.seed, counts=n)
    genres = sorted(GENRE_WORDS)
    a_genre = torch.zeros(len(ids), len(genres))
    for k, i in enumerate(ids):
        gs = [g for g in cat[i].attributes.get("genre", []) if g in GENRE_WORDS]
        for g in gs:
            a_genre[k, genres.index(g)] = 1.0 / len(gs)
    attrs = item_attribute_index(cat)
    b_attr = torch.zeros(len(ids), 1 + max(v for a in attrs for v, _ in a))
    for k, a in enumerate(attrs):
        for v, wt in a:
            b_attr[k, v] = wt
    words = {g: re.compile(rf"\b({w})", re.I) for g, w in GENRE_WORDS.items()}
    real_train = [d for d in data.train if not d.id.startswith("synth")]
    n_real, pop_real = cooccurrence_counts(real_train, cat)
    l_real = torch.log1p(n_real.to_dense())
    dialogues = data.real_valid if split == "valid" else data.real_test

    def context(s):
        m = [index[x] for x in dict.fromkeys(s.mentioned) if x in index]
        text = ITEM_RE.sub(" ", s.prompt)
        named = torch.tensor([1.0 if words[g].search(text) else 0.0 for g in genres])
        return m, named

    def ranker(a=0.0, g=1.0, lam=0.0, w=1.0, prior=0.1, beta=3.0, mu=0.0, b=0.0):
        pn = p / (1 + pop)[:, None] ** a
        qn = q / (1 + pop)[:, None] ** b

        def f(m, named):
            sc = prior * torch.log1p(pop) + lam * (a_genre @ named)
            if m:
                age = torch.tensor([g ** (len(m) - 1 - k) for k in range(len(m))])
                sc = sc + w * ((age[:, None] * pn[m]).sum(0) @ qn.T)
                sc[m] += beta
                if mu:
                    sc = sc + mu * (b_attr @ b_attr[m].sum(0))
            return sc

        return f

    def cooc(m, named):  # the baseline: full counts of the real training dialogues, popularity breaks ties
        sc = pop_real / (pop_real.max() * 1e3)
        return sc + l_real[m].sum(0) if m else sc

    def hits(f, samples, ctxs, dedup):
        out = []
        for s, (m, named) in zip(samples, ctxs, strict=True):
            sc = f(m, named).clone()
            if dedup and m:
                sc[m] = -1e9
            out.append(float((sc > sc[index[s.target]]).sum().item() < 10))
        return out

    sets = {}
    for dedup in (False, True):
        samples = real_samples(dialogues, cat, dedup=dedup)
        sets[dedup] = (samples, [context(s) for s in samples])
        named = sum(float(c[1].sum() > 0) for c in sets[dedup][1]) / len(samples)
        print(f"dedup={dedup}: {len(samples)} samples, {named:.2f} name a genre", flush=True)
    results = []
    for a, g, lam, w, mu, *rest in GRIDS[grid]:
        b, prior = rest if rest else (0.0, 0.1)
        f = ranker(a=a, g=g, lam=lam, w=w, mu=mu, b=b, prior=prior)
        r = [sum(hits(f, *sets[d], d)) / len(sets[d][0]) for d in (False, True)]
        results.append(((r[0] + r[1]) / 2, a, g, lam, w, mu, b, prior, r))
        print(f"a={a} g={g} lam={lam} w={w} mu={mu} b={b} prior={prior}: {r[0]:.3f} / {r[1]:.3f}", flush=True)
    results.sort(key=lambda x: -x[0])
    print("best five (mean of standard and dedup):")
    for mean, a, g, lam, w, mu, b, prior, r in results[:5]:
        print(f"  a={a} g={g} lam={lam} w={w} mu={mu} b={b} prior={prior}: {r[0]:.3f} / {r[1]:.3f} (mean {mean:.3f})")
    _, a, g, lam, w, mu, b, prior, _ = results[0]
    for dedup in (False, True):
        samples, ctxs = sets[dedup]
        groups = [s.group for s in samples]
        best = hits(ranker(a=a, g=g, lam=lam, w=w, mu=mu, b=b, prior=prior), samples, ctxs, dedup)
        for name, other in (("as built", ranker()), ("cooccurrence", cooc)):
            h = hits(other, samples, ctxs, dedup)
            diff = cluster_bootstrap_diff(h, best, groups)
            d, lo, hi = diff["diff"], diff["lo"], diff["hi"]
            print(f"dedup={dedup} best - {name} ({sum(h) / len(h):.3f}): {d:+.3f} [{lo:+.3f}, {hi:+.3f}]")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "valid", sys.argv[2] if len(sys.argv) > 2 else "first")
