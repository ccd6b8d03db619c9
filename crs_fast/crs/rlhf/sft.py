"""Supervised fine-tuning of the policy on the system turns of ReDial and synthetic dialogues
(cross-entropy on response tokens, the frozen trunk's activations cached across epochs)."""

from __future__ import annotations

import random
from collections.abc import Callable

import torch

from .build import param_groups
from .config import Config
from .corpus import CRSData, encode_pair, pad_right, sft_pairs
from .policy import Policy


def sft(
    policy: Policy, tok, data: CRSData, cfg: Config, *, progress: Callable[[int, dict], None] | None = None
) -> list[dict]:
    """Supervised fine-tuning on the system turns (items as item tokens): mean token NLL of the
    response, from ``linear_logprobs``. Returns the per-step metrics."""
    synthetic = sft_pairs([d for d in data.train if d.id.startswith("synth")], data.catalog)
    real = sft_pairs([d for d in data.train if not d.id.startswith("synth")], data.catalog)
    if not synthetic and not real:
        raise ValueError("no system turns with context to fine-tune on")
    pools = [p for p in (synthetic, real) if p]
    encoded: list[dict[int, tuple[list[int], list[int]]]] = [{} for _ in pools]

    def draw(source: int, n: int) -> list[tuple[list[int], list[int]]]:
        """``n`` pairs of a source, tokenized when first drawn (the same draw as sampling the list)."""
        out = []
        for j in rng.sample(range(len(pools[source])), min(n, len(pools[source]))):
            if j not in encoded[source]:
                encoded[source][j] = encode_pair(tok, *pools[source][j], cfg)
            out.append(encoded[source][j])
        return out

    opt = torch.optim.AdamW(param_groups(policy, cfg.sft_lr, cfg.item_lr), weight_decay=0.0)
    rng = random.Random(cfg.seed)
    n_batches = -(-cfg.sft_steps // max(cfg.sft_epochs, 1))
    cache: dict[int, tuple] = {}
    order = list(range(n_batches))
    history = []
    policy.train()
    for step in range(cfg.sft_steps):
        if step and step % n_batches == 0:  # a new epoch over the same batches, in a new order
            rng.shuffle(order)
        k = order[step % n_batches]
        if k not in cache:
            # half of each batch from each source: ReDial's turns (more numerous) rarely start with an item
            share = [cfg.sft_batch // len(pools) + (i < cfg.sft_batch % len(pools)) for i in range(len(pools))]
            batch = [x for source, n in enumerate(share) for x in draw(source, n)]
            ids, attn = pad_right([c + r for c, r in batch], tok.pad_token_id, policy.device)
            target = torch.zeros_like(ids, dtype=torch.float32)
            for i, (c, r) in enumerate(batch):
                target[i, len(c) : len(c) + len(r)] = 1.0
            state = policy.trunk(ids, attn) if cfg.sft_epochs > 1 else None
            cache[k] = (ids, attn, target[:, 1:], state)
        ids, attn, m, state = cache[k] if cfg.sft_epochs > 1 else cache.pop(k)
        lp, _, _ = policy.logprobs(ids, attn, select=m > 0, state=state)
        loss = -(lp * m).sum() / m.sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
        opt.step()
        row = {"step": step, "sft_loss": float(loss.detach())}
        history.append(row)
        if progress:
            progress(step, row)
    policy.eval()
    return history
