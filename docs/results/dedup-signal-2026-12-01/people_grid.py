"""Would people named in the dialogue help? The chosen untrained score (score_grid.py's best: recency
0.7, genre words 0.25) plus ``nu * sum_{people named} B_i,person`` on ReDial's validation dialogues.

    python docs/results/dedup-signal-2026-12-01/people_grid.py

People are the catalog's directors and stars (``item_attribute_index`` values, weight 1 / the item's
number of that kind), named when their full name's words follow one another in the context's text
(lower case, item tokens removed). Prints Recall@10 standard / dedup per ``nu`` (no LM).
"""

import pathlib
import re

import torch

from crs_fast.crs.rlhf.collab import cooccurrence_counts, cooccurrence_factors
from crs_fast.crs.rlhf.config import Config
from crs_fast.crs.rlhf.corpus import prepare_data
from crs_fast.crs.rlhf.cues import GENRE_WORDS, item_cues
from crs_fast.crs.rlhf.evaluate import real_samples
from crs_fast.crs.rlhf.lm import ITEM_RE


def main() -> None:
    cfg = Config(dataset="redial")
    data = prepare_data(cfg, pathlib.Path("runs/score_grid/redial"))
    cat = data.catalog
    ids = cat.ids()
    index = {i: n for n, i in enumerate(ids)}
    n, pop = cooccurrence_counts(data.train, cat)
    p, q = cooccurrence_factors(data.train, cat, cfg.collab_rank, cfg.seed, counts=n)
    a_genre = item_cues(cat)
    words = {g: re.compile(r"\b(" + "|".join(re.escape(w) for w in GENRE_WORDS[g]) + r")\b", re.I) for g in GENRE_WORDS}
    people: dict[str, int] = {}
    rows, cols, vals = [], [], []
    for k, i in enumerate(ids):
        for kind in ("director", "star"):
            names = list(dict.fromkeys(cat[i].attributes.get(kind, [])))
            for name in names:
                key = " ".join(re.findall(r"[a-z0-9]+", name.lower()))
                if len(key.split()) < 2:
                    continue
                v = people.setdefault(key, len(people))
                rows.append(k)
                cols.append(v)
                vals.append(1.0 / len(names))
    b = torch.sparse_coo_tensor([rows, cols], vals, (len(ids), len(people))).coalesce().to_dense()
    print(f"{len(people)} people of two or more words")

    def context(s):
        m = [index[x] for x in dict.fromkeys(s.mentioned) if x in index]
        text = ITEM_RE.sub(" ", s.prompt)
        named = torch.tensor([1.0 if words[g].search(text) else 0.0 for g in sorted(GENRE_WORDS)])
        toks = re.findall(r"[a-z0-9]+", text.lower())
        hit = torch.zeros(len(people))
        for size in (2, 3):
            for j in range(len(toks) - size + 1):
                v = people.get(" ".join(toks[j : j + size]))
                if v is not None:
                    hit[v] = 1.0
        return m, named, hit

    def score(m, named, hit, nu):
        sc = 0.1 * torch.log1p(pop) + 0.25 * (a_genre @ named) + nu * (b @ hit)
        if m:
            age = torch.tensor([0.7 ** (len(m) - 1 - k) for k in range(len(m))])
            sc = sc + (age[:, None] * p[m]).sum(0) @ q.T
            sc[m] += 3.0
        return sc

    for dedup in (False, True):
        samples = real_samples(data.real_valid, cat, dedup=dedup)
        ctxs = [context(s) for s in samples]
        share = sum(float(c[2].sum() > 0) for c in ctxs) / len(ctxs)
        out = []
        for nu in (0.0, 0.25, 0.5, 1.0, 2.0):
            hits = 0
            for s, (m, named, hit) in zip(samples, ctxs, strict=True):
                sc = score(m, named, hit, nu)
                if dedup and m:
                    sc[m] = -1e9
                hits += int((sc > sc[index[s.target]]).sum().item() < 10)
            out.append(f"nu={nu}: {hits / len(samples):.3f}")
        print(f"dedup={dedup} ({len(samples)} samples, {share:.2f} name a person): " + ", ".join(out), flush=True)


if __name__ == "__main__":
    main()
