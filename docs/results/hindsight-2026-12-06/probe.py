"""Can a reward learned from what the seeker does *later* in the dialogue add to SFT's ReDial ranking?

The bound of rphi-bound-2026-12-02 asked whether any reward learned from ReDial's feedback, at the
turn a movie is suggested, lifts valid ranking at its KL-regularised optimum
``pi*(i | c) ∝ pi_ref(i | c) exp(R(c, i) / beta)``; none did (93% of the rated suggestions are
liked). This probe asks the same of hindsight rewards: at a training context ``c_t`` (before system
turn ``t``), the items the dialogue mentions from turn ``t`` on (by either side) that were not
mentioned before, weighted ``gamma^(turns after t)``, optionally only those the seeker's form marks
liked (the engagement and liking that follow a suggestion: information SFT's next-item target
lacks). The reward model starts from the SFT policy's item scores and learns a correction:

    R(c, j) = S(c, j) + (f_c U) . V_j + b_j

``S``: the SFT policy's item scores; ``f_c``: the context's co-occurrence and cue features (what the
item scores read besides the hidden state, which the SFT item parts do not use: item_lr 1e-6);
``U`` [F, 32], ``V`` [I, 32], ``b`` [I] trained by the weighted cross-entropy of the hindsight items
over the catalog (AdamW, weight decay), on every real training context. Control: ``now``, the
items of turn ``t`` itself (SFT's own target, no hindsight).

The bound for each reward, after each epoch: valid Recall@10 of ``S + w z(R)`` (z: standardised per
context) minus SFT's, paired dialogue bootstrap 95% intervals, for w in 0.05 .. 1; and ``R`` alone.
Many cells are compared, so the best one is optimistic; nothing reads the test set.

usage: python probe.py RUN_DIR (the ReDial run of configs/full.toml, e.g. runs/full/redial)
"""

from __future__ import annotations

import json
import pathlib
import sys
import time

import torch

from crs_fast.crs.rlhf.compare import sample_sets
from crs_fast.crs.rlhf.config import Config
from crs_fast.crs.rlhf.corpus import prompt, real_training
from crs_fast.crs.rlhf.evaluate import Sample, cluster_bootstrap_diff
from crs_fast.crs.rlhf.item_fit import Queries, _marks, item_logits, queries, split
from crs_fast.crs.rlhf.run_io import load_policy, setup_stage

torch.manual_seed(0)
torch.set_num_threads(2)
run = pathlib.Path(sys.argv[1])
here = pathlib.Path(__file__).parent
t0 = time.time()
cfg = Config.load("configs/full.toml", dataset="redial")
data, policy, tok = setup_stage(cfg, run)
load_policy(policy, run / "sft" / "policy.safetensors")
policy.eval()
cat = data.catalog
ids_list = cat.ids()
index = {i: n for n, i in enumerate(ids_list)}
n_items = len(ids_list)
H = policy.item_rows().shape[1] - policy._item_extra().shape[1]  # the hidden-state part of a query

# --- training contexts and their hindsight targets -------------------------------------------------
GAMMAS = (0.0, 0.5, 1.0)
ctx_prompts: list[str] = []
targets: dict[str, list[tuple[int, int, float]]] = {}  # variant -> (context row, item, weight)
liked_share = [0, 0]
for d in real_training(data):
    form = d.ratings.get("initiator", {})
    before: set[str] = set()
    for i, t in enumerate(d.turns):
        if t.role == "system" and i > 0:
            row = len(ctx_prompts)
            later: dict[str, int] = {}  # item -> first turn (from i) it is mentioned at
            for j in range(i, len(d.turns)):
                for it in d.turns[j].items:
                    if it in index and it not in before and it not in later:
                        later[it] = j - i
            now = [it for it in t.items if it in index]
            if now or later:
                ctx_prompts.append(prompt(d.turns[:i], cat))
                for it in now:
                    targets.setdefault("now", []).append((row, index[it], 1.0))
                for it, k in later.items():
                    liked = (form.get(it) or {}).get("liked") == 1
                    liked_share[0] += liked
                    liked_share[1] += 1
                    for g in GAMMAS:
                        w = g**k if k else 1.0
                        if w > 0:
                            targets.setdefault(f"later_g{g}", []).append((row, index[it], w))
                            if liked:
                                targets.setdefault(f"liked_g{g}", []).append((row, index[it], w))
        before.update(x for x in t.items if x in index)
print(
    f"training contexts {len(ctx_prompts)}; later-mentioned items liked {liked_share[0] / liked_share[1]:.2f};"
    f" targets { ({k: len(v) for k, v in targets.items()}) }",
    flush=True,
)

# context features (no forward: the hidden part of the SFT item rows is ~0) for training contexts
dummy = ids_list[0]
tq = queries(policy, tok, [Sample(p, dummy, []) for p in ctx_prompts], index, cfg, hidden=False)
print(f"train queries {time.time() - t0:.0f}s", flush=True)

# valid: SFT's exact scores (hidden state included) and the same features
std, ded, _ = sample_sets(data.real_valid, cat)
vq = queries(policy, tok, std + ded, index, cfg)
vq_std, vq_ded = split(vq, len(std))
vf = queries(policy, tok, std + ded, index, cfg, hidden=False)
print(f"valid queries {time.time() - t0:.0f}s ({len(std)} / {len(ded)} samples)", flush=True)


@torch.no_grad()
def every_prompt(qs: Queries) -> torch.Tensor:
    """[P, I]: the policy's item scores after each distinct prompt of ``qs`` (one row per prompt)."""
    rows = torch.arange(len(qs.q))
    return item_logits(policy, Queries(qs.q, qs.ment, rows, rows, rows[:, None], qs.named, qs.named_w))


S_valid, S_feat_valid, S_train = every_prompt(vq), every_prompt(vf), every_prompt(tq)
F_train, F_valid = tq.q[:, H:].clone(), vf.q[:, H:].clone()
scale = F_train.std(0)
scale = torch.where(scale > 1e-6, scale, torch.ones_like(scale))  # the constant column stays 1
F_train, F_valid = F_train / scale, F_valid / scale


def recalls(score: torch.Tensor, qs, dedup: bool, k: int = 10) -> list[float]:
    """Per-sample Recall@k (ties against the target) of ``score`` [P, I] over the samples of ``qs``."""
    lg = score[qs.prompt]
    if dedup:
        lg = lg.masked_fill(_marks(qs.banned, n_items).bool(), float("-inf"))
    tgt = lg.gather(1, qs.target[:, None])
    return (((lg >= tgt).sum(1) - 1) < k).float().tolist()


groups = {"standard": [s.group for s in std], "dedup": [s.group for s in ded]}
qsets = {"standard": (vq_std, False), "dedup": (vq_ded, True)}
base = {p: recalls(S_valid, q, d) for p, (q, d) in qsets.items()}
feat = {p: sum(recalls(S_feat_valid, q, d)) / len(q) for p, (q, d) in qsets.items()}
result: dict = {
    "n": {p: len(q) for p, (q, _) in qsets.items()},
    "sft": {p: sum(v) / len(v) for p, v in base.items()},
    "sft_features_only": feat,
    "liked_share_of_later_items": liked_share[0] / liked_share[1],
    "training_contexts": len(ctx_prompts),
}
print("SFT valid R@10", result["sft"], "features only", feat, flush=True)


def z(x: torch.Tensor) -> torch.Tensor:
    return (x - x.mean(1, keepdim=True)) / x.std(1, keepdim=True).clamp(min=1e-6)


def bound(R: torch.Tensor) -> dict:
    out: dict = {"alone": {p: sum(recalls(R, q, d)) / len(q) for p, (q, d) in qsets.items()}}
    for w in (0.05, 0.1, 0.2, 0.5, 1.0):
        out[str(w)] = {
            p: cluster_bootstrap_diff(base[p], recalls(S_valid + w * z(R), q, d), groups[p], n=1000, seed=0)
            for p, (q, d) in qsets.items()
        }
    return out


def train_rm(variant: str, lr: float, wd: float, epochs: int = 4, rank: int = 32) -> list[dict]:
    trip = torch.tensor([(r, i) for r, i, _ in targets[variant]])
    trip[:, 0] = tq.prompt[trip[:, 0]]  # context -> its row of the queries (equal prompts share one)
    wts = torch.tensor([w for _, _, w in targets[variant]])
    g = torch.Generator().manual_seed(0)
    U = (torch.randn(F_train.shape[1], rank, generator=g) * 0.01).requires_grad_()
    V = (torch.randn(n_items, rank, generator=g) * 0.01).requires_grad_()
    b = torch.zeros(n_items, requires_grad=True)
    opt = torch.optim.AdamW([U, V, b], lr=lr, weight_decay=wd)
    rows = []
    for epoch in range(1, epochs + 1):
        order, total = torch.randperm(len(trip), generator=g), 0.0
        for s in range(0, len(order), 256):
            sel = order[s : s + 256]
            r, it, w = trip[sel, 0], trip[sel, 1], wts[sel]
            logits = S_train[r] + (F_train[r] @ U) @ V.T + b
            loss = (torch.nn.functional.cross_entropy(logits, it, reduction="none") * w).sum() / w.sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(sel)
        with torch.no_grad():
            R = S_valid + (F_valid @ U) @ V.T + b
        res = {"epoch": epoch, "train_loss": total / len(trip), **bound(R)}
        best = max(
            (k for k in res if k not in ("epoch", "train_loss", "alone")),
            key=lambda k: res[k]["standard"]["diff"] + res[k]["dedup"]["diff"],
        )
        brief = {p: round(res[best][p]["diff"], 3) for p in ("standard", "dedup")}
        los = {p: (round(res[best][p]["lo"], 3), round(res[best][p]["hi"], 3)) for p in ("standard", "dedup")}
        print(
            f"{variant} lr {lr} wd {wd} epoch {epoch}: loss {res['train_loss']:.3f}, alone"
            f" {res['alone']['standard']:.3f}/{res['alone']['dedup']:.3f}, best w {best}: {brief} {los}"
            f" ({time.time() - t0:.0f}s)",
            flush=True,
        )
        rows.append(res)
    return rows


for variant in ("now", "liked_g0.0", "later_g0.5", "liked_g0.5", "later_g1.0", "liked_g1.0"):
    for lr, wd in ((1e-3, 1e-2), (1e-2, 1e-2)):
        result[f"{variant}_lr{lr}"] = train_rm(variant, lr, wd)
        (here / "probe.json").write_text(json.dumps(result, indent=1))
print(f"done {time.time() - t0:.0f}s")
