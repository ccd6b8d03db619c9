"""What could R_phi and PPO add to the SFT policy's ReDial ranking? The bound, on valid.

For one item choice, the KL-regularised RL optimum is pi*(i | c) ∝ pi_ref(i | c) exp(R(c, i) / beta):
ranking by ``SFT logit + w * z(R)`` (z: R standardised per context, w = 1 / beta scaled) is the best
any PPO run against reward R can do at that context. If no w lifts valid Recall@10 above SFT's,
PPO against R cannot add to the ranking either. Rewards tried:

* ``rm``: the run's R_phi (implicit-feedback heads; trained on suggested turns only);
* ``accept``: an acceptance head on the same inputs, trained on ReDial's training dialogues: the seeker's
  form says the suggested movie was liked (1) or not (0); unobserved catalog items drawn uniformly are
  negatives (the implicit-feedback assumption of BPR / NCF);
* ``accept_pop``: the same with negatives drawn by popularity (training mentions), so the head cannot
  score by popularity alone.

usage: python probe.py RUN_DIR (a ReDial run of configs/full.toml, e.g. runs/full/redial)
"""

from __future__ import annotations

import json
import pathlib
import sys
import time

import torch
from torch import nn

from crs_fast.crs.rlhf.compare import sample_sets
from crs_fast.crs.rlhf.config import Config
from crs_fast.crs.rlhf.corpus import clip_context, pad_right, prompt, real_training
from crs_fast.crs.rlhf.encoder import SentenceEncoder
from crs_fast.crs.rlhf.evaluate import cluster_bootstrap_diff
from crs_fast.crs.rlhf.lm import render
from crs_fast.crs.rlhf.reward import CatalogMatch, Scorer
from crs_fast.crs.rlhf.run_io import load_policy, load_reward_model, setup_stage

torch.manual_seed(0)
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
std, ded, _ = sample_sets(data.real_valid, cat)
prompts = list(dict.fromkeys(s.prompt for s in std))
row = {p: n for n, p in enumerate(prompts)}
print(f"valid: {len(std)} / {len(ded)} samples, {len(prompts)} contexts", flush=True)

# SFT's score of every item after each valid context (what rank_items ranks by)
S = torch.empty(len(prompts), len(ids_list))
with torch.no_grad():
    for i in range(0, len(prompts), 32):
        chunk = prompts[i : i + 32]
        seqs = [clip_context(tok, tok(p, add_special_tokens=False)["input_ids"], cfg.max_context) for p in chunk]
        ids, attn = pad_right(seqs, tok.pad_token_id)
        q = policy.next_query(ids, attn).float()
        sc = q @ policy.item_rows().float().T
        b = policy.bonus_at(ids, torch.arange(len(chunk)), attn.sum(1) - 1)
        S[i : i + len(chunk)] = sc if b is None else sc + b
        top = policy.rank_items(ids, attn, 10)
        agree = (S[i : i + len(chunk)].topk(10).indices == top).float().mean()
        assert agree > 0.95, f"scores disagree with rank_items ({agree:.3f})"
print(f"SFT scores {time.time() - t0:.0f}s", flush=True)


def ranks(score: torch.Tensor, samples, dedup: bool) -> list[int]:
    out = []
    for s in samples:
        r = score[row[s.prompt]].clone()
        if dedup:
            banned = [index[x] for x in s.mentioned if x in index and x != s.target]
            r[banned] = float("-inf")
        out.append(int((r > r[index[s.target]]).sum()))
    return out


def recall(rk: list[int], k: int = 10) -> list[float]:
    return [float(x < k) for x in rk]


enc = SentenceEncoder()
scorer = Scorer(load_reward_model(run, enc.dim), enc, cat, item_cache=run / "rm" / "item_encodings.safetensors")
items = scorer.item_encodings()
ctx_emb = enc.encode([render(p, cat) for p in prompts])
rewards = {"rm": scorer.item_rewards(prompts, ctx_emb)}
print(f"R_phi item rewards {time.time() - t0:.0f}s", flush=True)

# acceptance heads on the training dialogues' forms
match = CatalogMatch(cat)
pos_ctx, pos_item, pos_y = [], [], []
for d in real_training(data):
    form = d.ratings.get("initiator", {})
    for i, t in enumerate(d.turns):
        if t.role != "system" or i == 0:
            continue
        for it in t.items:
            liked = (form.get(it) or {}).get("liked")
            if it in index and liked in (0, 1) and (form.get(it) or {}).get("suggested") == 1:
                pos_ctx.append(render(prompt(d.turns[:i], cat), cat))
                pos_item.append(index[it])
                pos_y.append(float(liked))
print(f"labelled suggestions: {len(pos_y)} ({sum(pos_y) / len(pos_y):.2f} liked)", flush=True)
train_ctx = list(dict.fromkeys(pos_ctx))
cid = {c: n for n, c in enumerate(train_ctx)}
C = enc.encode(train_ctx)
M = torch.stack([match(c) for c in train_ctx])  # [n_ctx, I, 3]
print(f"train contexts encoded {time.time() - t0:.0f}s", flush=True)
mentions = torch.zeros(len(ids_list))
for d in real_training(data):
    for t in d.turns:
        for it in t.items:
            if it in index:
                mentions[index[it]] += 1


def train_head(neg_weights: torch.Tensor, negatives: int = 8, epochs: int = 6) -> nn.Module:
    g = torch.Generator().manual_seed(0)
    c_rows = torch.tensor([cid[c] for c in pos_ctx])
    it = torch.tensor(pos_item)
    y = torch.tensor(pos_y)
    neg_c = c_rows.repeat_interleave(negatives)
    neg_i = torch.multinomial(neg_weights, len(neg_c), replacement=True, generator=g)
    all_c, all_i = torch.cat([c_rows, neg_c]), torch.cat([it, neg_i])
    all_y = torch.cat([y, torch.zeros(len(neg_c))])
    net = nn.Sequential(nn.Linear(4 * enc.dim + 3, 128), nn.GELU(), nn.Linear(128, 1))
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=1e-4)
    for _ in range(epochs):
        perm = torch.randperm(len(all_y), generator=g)
        for j in range(0, len(perm), 512):
            b = perm[j : j + 512]
            c, r = C[all_c[b]], items[all_i[b]]
            x = torch.cat([c, r, c * r, (c - r).abs(), M[all_c[b], all_i[b]]], -1)
            loss = nn.functional.binary_cross_entropy_with_logits(net(x)[:, 0], all_y[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return net.eval()


@torch.no_grad()
def item_scores(net: nn.Module) -> torch.Tensor:
    out = torch.empty(len(prompts), len(ids_list))
    for j, p in enumerate(prompts):
        c = ctx_emb[j].expand(len(ids_list), -1)
        x = torch.cat([c, items, c * items, (c - items).abs(), match(render(p, cat))], -1)
        out[j] = net(x)[:, 0]
    return out


for name, w in (("accept", torch.ones(len(ids_list))), ("accept_pop", mentions + 1)):
    rewards[name] = item_scores(train_head(w))
    print(f"{name} {time.time() - t0:.0f}s", flush=True)

groups_std, groups_ded = [s.group for s in std], [s.group for s in ded]
base = {p: recall(ranks(S, smp, p == "dedup")) for p, smp in (("standard", std), ("dedup", ded))}
result = {"n": {"standard": len(std), "dedup": len(ded)}, "sft": {p: sum(v) / len(v) for p, v in base.items()}}
print("SFT valid R@10", result["sft"], flush=True)


def z(x: torch.Tensor) -> torch.Tensor:
    return (x - x.mean(1, keepdim=True)) / x.std(1, keepdim=True).clamp(min=1e-6)


for name, R in rewards.items():
    res: dict = {"alone": {}}
    for p, smp in (("standard", std), ("dedup", ded)):
        rr = recall(ranks(R, smp, p == "dedup"))
        res["alone"][p] = sum(rr) / len(rr)
    for w in (0.05, 0.1, 0.2, 0.5, 1.0, 2.0):
        res[str(w)] = {}
        for p, smp, grp in (("standard", std, groups_std), ("dedup", ded, groups_ded)):
            rr = recall(ranks(S + w * z(R), smp, p == "dedup"))
            res[str(w)][p] = cluster_bootstrap_diff(base[p], rr, grp, n=1000, seed=0)
    result[name] = res
    best = max((k for k in res if k != "alone"), key=lambda k: res[k]["standard"]["diff"] + res[k]["dedup"]["diff"])
    print(name, "alone", res["alone"], "best w", best, {p: res[best][p] for p in ("standard", "dedup")}, flush=True)
(here / "probe.json").write_text(json.dumps(result, indent=1))
print(f"done {time.time() - t0:.0f}s")
