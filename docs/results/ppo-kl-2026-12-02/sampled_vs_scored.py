"""Does PPO score exactly what the rollouts sampled, with the real model and settings? Rolls out
16 synthetic dialogues with a run's PPO policy (ReDial, configs/full.toml), records the
probabilities the decoder drew each token from, and compares them with make_batch's old log-probs
at the same positions; then reports k1 and k3 per dialogue for this batch.

usage: python sampled_vs_scored.py RUN_DIR (e.g. runs/full/redial, with sft/ and ppo/)
"""

from __future__ import annotations

import json
import pathlib
import sys

import torch

from crs_fast.crs.rlhf import rollout as RO
from crs_fast.crs.rlhf.build import frozen_copy
from crs_fast.crs.rlhf.config import Config
from crs_fast.crs.rlhf.ppo import make_batch
from crs_fast.crs.rlhf.run_io import load_policy, setup_stage

run = pathlib.Path(sys.argv[1])
cfg = Config.load("configs/full.toml", dataset="redial")
data, policy, tok = setup_stage(cfg, run)
_, ref, _ = setup_stage(cfg, run, data)
load_policy(ref, run / "sft" / "policy.safetensors")
load_policy(policy, run / "ppo" / "policy.safetensors")
ref = frozen_copy(ref)
policy.eval()
drawn: list[tuple[torch.Tensor, torch.Tensor]] = []
real = torch.multinomial


def record(p, n, generator=None):
    out = real(p, n, generator=generator)
    drawn.append((p.clone(), out.clone()))
    return out


RO.torch.multinomial = record
seeds = [7_000_000 + i for i in range(16)]
eps = RO.rollout(policy, tok, data.catalog, seeds, cfg, None, gen_seed=123, pool=data.pool)
RO.torch.multinomial = real
lengths = [len(e.ids) for e in eps]
print(f"episode lengths {min(lengths)}..{max(lengths)} tokens (max_context {cfg.max_context})", flush=True)
batch = make_batch(policy, ref, eps, tok, 0.01, cfg)
lp = torch.zeros(len(eps), batch.mask.shape[1])
for mb in batch.minibatches:
    for row, (r, a) in enumerate(zip(mb.ids, mb.attn, strict=True)):
        i = next(i for i, e in enumerate(eps) if len(e.ids) == int(a.sum()) and e.ids == r[: len(e.ids)].tolist())
        lp[i, : mb.old_lp.shape[1]] = mb.old_lp[row]
# the decoder's calls: turn by turn, each call one step for the users still talking
gaps, n = [], 0
call = 0
for k in range(cfg.turns):
    live = [i for i, e in enumerate(eps) if len(e.turn_starts) > k]
    if not live:
        break
    steps = max(eps[i].turn_ends[k] - eps[i].turn_starts[k] + 1 for i in live)
    steps = min(steps, cfg.new_tokens)
    for s in range(steps):
        if call >= len(drawn):
            break
        p, out = drawn[call]
        call += 1
        for j, i in enumerate(live):
            pos = eps[i].turn_starts[k] + s
            if pos > eps[i].turn_ends[k] or int(out[j, 0]) != eps[i].ids[pos]:
                continue  # finished rows, or the EOS appended to a turn that ran out of tokens
            gaps.append(abs(float(torch.log(p[j, eps[i].ids[pos]])) - float(lp[i, pos - 1])))
            n += 1
gap = torch.tensor(gaps)
# the EOS appended to a turn that ran out of tokens: in the sequence, never sampled
forced = torch.zeros_like(batch.mask, dtype=torch.bool)
for i, e in enumerate(eps):
    for start, end in zip(e.turn_starts, e.turn_ends, strict=True):
        if end - start == cfg.new_tokens:
            forced[i, end - 1] = True
k1 = (batch.kl * batch.mask).sum(1)
k3 = (batch.kl_k3 * batch.mask).sum(1)
parts = {}
for name, where in (("sampled", (batch.mask > 0) & ~forced), ("forced_eos", forced)):
    parts[name] = {
        "tokens": int(where.sum()),
        "k1_per_dialogue": float((batch.kl * where).sum(1).mean()),
        "k3_per_dialogue": float((batch.kl_k3 * where).sum(1).mean()),
    }
print(json.dumps(parts, indent=1))
res = {
    "parts": parts,
    "tokens_compared": n,
    "max_abs_logprob_gap": float(gap.max()),
    "median_abs_logprob_gap": float(gap.median()),
    "share_over_1e-3": float((gap > 1e-3).float().mean()),
    "k1_per_dialogue": k1.tolist(),
    "k3_per_dialogue": k3.tolist(),
}
print(json.dumps({k: v for k, v in res.items() if not k.endswith("dialogue")}, indent=1))
print(f"k1 {k1.mean():.3f} +- {k1.std() / len(k1) ** 0.5:.3f}, k3 {k3.mean():.3f} +- {k3.std() / len(k3) ** 0.5:.3f}")
(pathlib.Path(__file__).parent / "sampled_vs_scored.json").write_text(json.dumps(res, indent=1))
