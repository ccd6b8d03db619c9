"""What R_phi makes of a policy's item choice, without training: the KL-regularised optimum

    pi*(a | s) ~ pi(a | s) exp(R_phi(s, a) / beta)

over the catalog at held-out synthetic users' first turns (``pi`` given an item, as decoding with
``recommend_first`` samples it), with its Recall@10, the simulator's fit of its greedy choice and
its expected fit, and its KL to ``pi``. It is the target that PPO's expected item surrogate moves
towards (``item_pg``), so it says how much a reward model can give before any PPO is run.

``python -m crs_fast.crs.rlhf.analysis --out runs/demo`` (after the demo's SFT and R_phi stages).
"""

from __future__ import annotations

import argparse
import json
import pathlib
from collections.abc import Sequence
from typing import Any

import torch

from ..data.schema import Turn
from ..data.simulator import UserSimulator
from .config import Config
from .corpus import clip_context, pad_right, prepare_data, prompt
from .evaluate import synthetic_seed
from .reward import Scorer
from .run_io import load_policy, load_reward_model
from .stages import setup_stage


def _summary(score: torch.Tensor, base: torch.Tensor, fit: torch.Tensor, targets: list[list[int]]) -> dict:
    top = score.topk(min(10, score.shape[1]), -1).indices.tolist()
    hits = sum(t in row for row, ts in zip(top, targets, strict=True) for t in ts)
    logp = torch.log_softmax(score, -1)
    return {
        "recall@10": hits / max(sum(len(t) for t in targets), 1),
        "greedy_fit": float(fit.gather(1, score.argmax(-1, keepdim=True)).mean()),
        "expected_fit": float((logp.exp() * fit).sum(-1).mean()),
        "kl": float((logp.exp() * (logp - base)).sum(-1).mean()),
    }


@torch.no_grad()
def kl_optimum(
    cfg: Config,
    out: pathlib.Path,
    *,
    betas: Sequence[float] = (0.03, 0.1, 0.3, 1.0),
    users: int = 96,
    stage: str = "sft",
    encoder: Any = None,
) -> dict[str, dict[str, float]]:
    """Recall@10, greedy and expected fit and KL (nats per choice) of the policy of ``stage`` under
    ``out`` ("policy") and of its optimum against R_phi for each beta ("beta=..."), on the first
    turns of held-out users ``0 .. users - 1``."""
    from .encoder import SentenceEncoder

    if not betas or min(betas) <= 0:
        raise ValueError(f"betas must be positive, got {list(betas)}")
    encoder = encoder or SentenceEncoder()
    data = prepare_data(cfg, out / "data")
    _, policy, tok = setup_stage(cfg, out, data)
    load_policy(policy, out / stage / "policy.safetensors")
    policy.eval()
    rm = load_reward_model(out, encoder.dim)
    scorer = Scorer(rm, encoder, data.catalog, item_cache=out / "rm" / "item_encodings.safetensors")
    ids = data.catalog.ids()
    index = {x: n for n, x in enumerate(ids)}
    user = UserSimulator(data.catalog, pool=data.pool)
    prompts, targets, fits = [], [], []
    for i in range(users):
        first = user.reset(synthetic_seed(cfg, i, "eval"))
        prompts.append(prompt([Turn("user", first)], data.catalog))
        targets.append([index[t] for t in sorted(user.targets)])
        fits.append(torch.tensor([user.fit(x) for x in ids]))
    fit = torch.stack(fits)
    seqs = [clip_context(tok, tok(p, add_special_tokens=False)["input_ids"], cfg.max_context) for p in prompts]
    x, attn = pad_right(seqs, tok.pad_token_id, policy.device)
    q = policy.next_query(x, attn).float()
    base = torch.log_softmax(q @ policy.item_rows().float().T, -1).cpu()
    reward = scorer.item_rewards(prompts)
    result = {"policy": _summary(base, base, fit, targets), "rphi_alone": _summary(reward, base, fit, targets)}
    for beta in betas:
        result[f"beta={beta:g}"] = _summary(base + reward / beta, base, fit, targets)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    """Print :func:`kl_optimum` for a pipeline output directory as JSON."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=pathlib.Path, default=pathlib.Path("runs/demo"), help="the pipeline's output")
    ap.add_argument("--config", type=pathlib.Path, help="the TOML file the pipeline ran with, if any")
    ap.add_argument("--quick", action="store_true", help="the pipeline ran with --quick")
    ap.add_argument("--stage", default="sft", choices=["sft", "ppo"])
    ap.add_argument("--users", type=int, default=96)
    ap.add_argument("--betas", type=float, nargs="+", default=[0.03, 0.1, 0.3, 1.0])
    args = ap.parse_args(argv)
    cfg = Config.load(args.config, quick=args.quick)
    res = kl_optimum(cfg, args.out, betas=args.betas, users=args.users, stage=args.stage)
    print(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
