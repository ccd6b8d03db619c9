"""Evaluation of a recommender policy: ranking (Recall, NDCG, MRR at 1, 10, 50; standard and
dedup), coherence (sentence-encoder similarity of context and response, distinct-1/2),
satisfaction (the simulator's, R_phi's, ReDial's success rate and reward per dialogue length),
and paired bootstrap confidence intervals between policies."""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..data.schema import Catalog, Dialogue, Turn
from ..data.simulator import UserSimulator
from ..data.splits import rec_samples
from .config import Config
from .corpus import clip_context, pad_right, prompt
from .lm import render
from .policy import Policy
from .reward import Scorer
from .rollout import rollout

KS = (1, 10, 50)


@dataclass
class Sample:
    """A ranking sample: the prompt, one ground-truth item, the items already mentioned, and the
    group it belongs to (its synthetic user or ReDial dialogue): samples of one group share a
    context, so confidence intervals resample groups, not samples."""

    prompt: str
    target: str
    mentioned: list[str]
    group: str = ""


def synthetic_samples(catalog: Catalog, seeds: Sequence[int], pool: Sequence[str] | None = None) -> list[Sample]:
    """Held-out synthetic users (drawn from ``pool``): their first message, one sample per target item."""
    out = []
    user = UserSimulator(catalog, pool=pool)
    for s in seeds:
        first = user.reset(s)
        for t in sorted(user.targets):
            out.append(Sample(prompt([Turn("user", first)], catalog), t, list(user.liked), f"user-{s}"))
    return out


def real_samples(
    dialogues: Sequence[Dialogue], catalog: Catalog, *, dedup: bool, final_only: bool = False
) -> list[Sample]:
    """One sample per ground-truth item of each recommender turn (``rec_samples``); with
    ``final_only``, of each dialogue's last turn only."""
    last = {d.id: len(d.turns) - 1 for d in dialogues}
    return [
        Sample(prompt(s.context, catalog), s.targets[0], s.mentioned, s.dialogue_id)
        for s in rec_samples(dialogues, dedup=dedup)
        if s.targets[0] in catalog and (not final_only or s.turn_index == last[s.dialogue_id])
    ]


class TrunkCache:
    """The frozen trunk's activations per batch of prompts, shared by policies whose frozen part is
    identical (base, SFT and PPO when only the top layers train): the trunk runs once per prompt
    for all of them. A policy whose frozen parameters differ from the first one's gets None from
    :meth:`for_policy` (no sharing)."""

    def __init__(self) -> None:
        self.states: dict[tuple[str, ...], Any] = {}
        self.frozen: list[torch.Tensor] | None = None

    def for_policy(self, policy: Policy) -> TrunkCache | None:
        """This cache if ``policy``'s frozen parameters equal those it was filled with, else None."""
        if not policy.train_layers:
            return None
        frozen = [p.detach() for p in policy.parameters() if not p.requires_grad]
        if self.frozen is None:  # references, not copies: evaluation never changes them
            self.frozen = frozen
            return self
        return self if tensors_equal(frozen, self.frozen) else None


def tensors_equal(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> bool:
    """Whether two sequences of tensors are equal element for element (shape, dtype, values)."""
    return len(a) == len(b) and all(
        x.shape == y.shape and x.dtype == y.dtype and torch.equal(x, y.to(x.device)) for x, y in zip(a, b, strict=True)
    )


def ranking_tensors(policy: Policy) -> dict[str, torch.Tensor]:
    """Every tensor :meth:`Policy.rank_items` reads: the parameters and buffers, less the value
    head and the LM head's text rows (with co-occurrence factors the item rows are ``item_out``;
    without, the item rows of the trainable head copy are kept). Two policies with equal tensors
    here rank every context identically."""
    out = {n: t.detach() for n, t in [*policy.named_parameters(), *policy.named_buffers()]}
    for name in [n for n in out if n.startswith("value_head.")]:
        del out[name]
    if "out_head" in out:
        head = out.pop("out_head")
        if policy.item_bias is None:
            out["out_head[items]"] = head[policy.item_ids]
    return out


class RankingReuse:
    """Rankings shared by policies whose item scores are provably identical (PPO with
    ``ppo_freeze = "query"`` trains only the text rows and the value head): :meth:`store_for`
    returns the store of the first policy whose :func:`ranking_tensors` equal this one's
    exactly, and that policy's name, or a new empty store. Callers put in it what depends only on
    the ranking (top lists, ranks) and read it back instead of recomputing."""

    def __init__(self) -> None:
        self.entries: list[tuple[str, dict[str, torch.Tensor], dict[str, Any]]] = []

    def store_for(self, name: str, policy: Policy) -> tuple[dict[str, Any], str | None]:
        """(store, name of the policy it came from or None when new) for ``policy``."""
        mine = ranking_tensors(policy)
        for other, tensors, store in self.entries:
            if tensors.keys() == mine.keys() and tensors_equal(list(mine.values()), [tensors[k] for k in mine]):
                return store, other
        store: dict[str, Any] = {}
        self.entries.append((name, mine, store))  # references: evaluation never changes them
        return store, None


@torch.no_grad()
def top_lists(
    policy: Policy, tok, prompts: Sequence[str], k: int, cfg: Config, trunk: TrunkCache | None = None
) -> dict[str, list[int]]:
    """The policy's top-``k`` catalog indices for each distinct prompt (one forward per prompt;
    the frozen trunk's part from ``trunk`` when it has it). Prompts are batched in order of
    length, so a batch pads little (right padding: a row's scores do not depend on it)."""
    todo = list(dict.fromkeys(prompts))
    tokens = {p: clip_context(tok, tok(p, add_special_tokens=False)["input_ids"], cfg.max_context) for p in todo}
    todo.sort(key=lambda p: len(tokens[p]))  # stable: equal lengths keep their order
    out: dict[str, list[int]] = {}
    for i in range(0, len(todo), 32):
        chunk = todo[i : i + 32]
        seqs = [tokens[p] for p in chunk]
        ids, attn = pad_right(seqs, tok.pad_token_id, policy.device)
        state = None
        if trunk is not None:
            key = tuple(chunk)
            if key not in trunk.states:
                trunk.states[key] = policy.trunk(ids, attn)
            state = trunk.states[key]
        out.update(zip(chunk, policy.rank_items(ids, attn, k, state=state).tolist(), strict=True))
    return out


def ranks(
    policy: Policy,
    tok,
    catalog: Catalog,
    samples: Sequence[Sample],
    cfg: Config,
    lists: dict[str, list[int]] | None = None,
    key: Callable[[Sample], str] = lambda s: s.prompt,
) -> tuple[list[int | None], list[int | None]]:
    """0-based rank of each sample's target within the policy's top 50 (None beyond): standard,
    and with the items already mentioned excluded from the ranking ("dedup"). One forward per
    distinct context (``lists`` from :func:`top_lists` may be passed in): the dedup ranking
    skips mentioned items in a longer list. ``key``: how a sample finds its list in ``lists`` (a
    baseline's list also depends on the context's mentions)."""
    index = {i: n for n, i in enumerate(catalog.ids())}
    extra = max((len(s.mentioned) for s in samples), default=0)
    if lists is None:
        lists = top_lists(policy, tok, [s.prompt for s in samples], min(len(index), max(KS) + extra), cfg)
    std: list[int | None] = []
    dedup: list[int | None] = []
    for s in samples:
        row, t = lists[key(s)], index[s.target]
        std.append(row.index(t) if t in row[: max(KS)] else None)
        banned = {index[x] for x in s.mentioned if x in index}
        kept = [x for x in row if x not in banned][: max(KS)]
        dedup.append(kept.index(t) if t in kept else None)
    return std, dedup


def ranking_metrics(r: Sequence[int | None]) -> dict[str, float]:
    """Recall@k, NDCG@k, MRR@k (one relevant item per sample) for k in 1, 10, 50."""
    n = max(len(r), 1)
    out = {}
    for k in KS:
        hit = [x is not None and x < k for x in r]
        out[f"recall@{k}"] = sum(hit) / n
        out[f"ndcg@{k}"] = sum(1 / math.log2(x + 2) for x, h in zip(r, hit, strict=True) if h) / n
        out[f"mrr@{k}"] = sum(1 / (x + 1) for x, h in zip(r, hit, strict=True) if h) / n
    out["n"] = len(r)
    return out


def distinct(texts: Sequence[str], n: int) -> float:
    """Distinct-n: unique n-grams over all n-grams of the responses."""
    grams = [tuple(w[i : i + n]) for t in texts for w in [t.split()] for i in range(len(w) - n + 1)]
    return len(set(grams)) / max(len(grams), 1)


def dialogue_metrics(
    policy,
    tok,
    catalog: Catalog,
    seeds: Sequence[int],
    cfg: Config,
    scorer: Scorer,
    encoder,
    pool: Sequence[str] | None = None,
) -> tuple[dict, dict]:
    """Satisfaction and coherence from greedy dialogues with held-out synthetic users (drawn from
    ``pool``); also the per-user values (for paired bootstraps): ``satisfaction`` (the
    simulator's), ``accepted`` (0/1), ``rphi_reward`` (``scorer``'s reward, mean over the user's
    system turns) and ``coherence`` (mean over the user's turns of the encoder's cosine between
    context and response). The reported means are the means of these per-user values, except
    coherence and distinct-n, which pool all turns."""
    eps = rollout(policy, tok, catalog, seeds, cfg, scorer, sample=False, pool=pool)
    ctx = [render(c, catalog) for e in eps for c in e.contexts]
    resp = [render(r, catalog) for e in eps for r in e.responses]
    coh = (encoder.encode(ctx) * encoder.encode(resp)).sum(-1) if resp else torch.zeros(0)
    sat = [e.satisfaction for e in eps]
    per = {
        "satisfaction": sat,
        "accepted": [float(e.accepted) for e in eps],
        "rphi_reward": [sum(e.rewards) / max(len(e.rewards), 1) for e in eps],
        "coherence": [float(c.mean()) if len(c) else 0.0 for c in coh.split([len(e.responses) for e in eps])],
    }
    out = {
        "satisfaction": sum(sat) / max(len(sat), 1),
        "accept_rate": sum(per["accepted"]) / max(len(eps), 1),
        "rphi_reward": sum(per["rphi_reward"]) / max(len(eps), 1),
        "coherence": float(coh.mean()) if len(coh) else 0.0,
        "distinct1": distinct(resp, 1),
        "distinct2": distinct(resp, 2),
        "turns": sum(len(e.responses) for e in eps) / max(len(eps), 1),
        "item_rate": sum(bool(r) for e in eps for r in e.recs) / max(sum(len(e.recs) for e in eps), 1),
        "example": resp[:3],
    }
    return out, per


def redial_success(
    policy, tok, catalog: Catalog, dialogues: Sequence[Dialogue], cfg: Config, lists: dict[str, list[int]] | None = None
) -> dict[str, float]:
    """ReDial success rate (the rank-1 movie of some recommender turn was liked or seen by the
    seeker) and reward per dialogue length (1.0 liked, 0.5 seen, over the dialogue's turns)."""
    rows = [
        (d, prompt(d.turns[:i], catalog))
        for d in dialogues
        for i, t in enumerate(d.turns)
        if t.role == "system" and t.items and i > 0
    ]
    if not rows:
        return {"success_rate": float("nan"), "reward_per_length": float("nan"), "dialogues": 0}
    ids = catalog.ids()
    if lists is None:
        lists = top_lists(policy, tok, [p for _, p in rows], 1, cfg)
    success: dict[str, bool] = {}
    reward: dict[str, float] = {}
    for d, p in rows:
        lab = d.ratings.get("initiator", {}).get(ids[lists[p][0]], {})
        r = 1.0 if lab.get("liked") == 1 else 0.5 if lab.get("seen") == 1 else 0.0
        success[d.id] = success.get(d.id, False) or r > 0
        reward[d.id] = reward.get(d.id, 0.0) + r / max(len(d.turns), 1)
    return {
        "success_rate": sum(success.values()) / len(success),
        "reward_per_length": sum(reward.values()) / len(reward),
        "dialogues": len(success),
    }


def bootstrap_diff(a: Sequence[float], b: Sequence[float], *, n: int = 1000, seed: int = 0) -> dict[str, float]:
    """Paired bootstrap of mean(b - a): the mean and its 95% confidence interval."""
    d = [y - x for x, y in zip(a, b, strict=True)]
    if not d:
        return {"diff": float("nan"), "lo": float("nan"), "hi": float("nan")}
    rng = random.Random(seed)
    means = sorted(sum(d[rng.randrange(len(d))] for _ in d) / len(d) for _ in range(n))
    return {"diff": sum(d) / len(d), "lo": means[int(0.025 * n)], "hi": means[min(n - 1, int(0.975 * n))]}


def cluster_bootstrap_diff(
    a: Sequence[float], b: Sequence[float], groups: Sequence[Hashable], *, n: int = 1000, seed: int = 0
) -> dict[str, float]:
    """Paired bootstrap of mean(b - a) that resamples whole groups (e.g. the samples of one
    dialogue, which are not independent): each replicate draws as many groups as there are, with
    replacement, and takes the mean of ``b - a`` over all their samples. Returns the mean over all
    samples, its 95% confidence interval and the number of groups."""
    if not len(a) == len(b) == len(groups):
        raise ValueError(
            f"cluster_bootstrap_diff: a, b and groups differ in length ({len(a)}, {len(b)}, {len(groups)})"
        )
    sums: dict[Hashable, list[float]] = {}
    for x, y, g in zip(a, b, groups, strict=True):
        acc = sums.setdefault(g, [0.0, 0.0])
        acc[0] += y - x
        acc[1] += 1
    if not sums:
        return {"diff": float("nan"), "lo": float("nan"), "hi": float("nan"), "groups": 0}
    per = list(sums.values())
    rng = random.Random(seed)
    means = []
    for _ in range(n):
        draw = [per[rng.randrange(len(per))] for _ in per]
        means.append(sum(d for d, _ in draw) / sum(c for _, c in draw))
    means.sort()
    total = sum(d for d, _ in per) / sum(c for _, c in per)
    return {"diff": total, "lo": means[int(0.025 * n)], "hi": means[min(n - 1, int(0.975 * n))], "groups": len(per)}


_SEED_BASE = {"eval": 1_000_000_000, "val": 2_000_000_000, "train": 3_000_000_000}


def synthetic_seed(cfg: Config, i: int, kind: str) -> int:
    """Seed of synthetic user ``i`` of a split ("train" for PPO, "val" during training, "eval"
    held out): disjoint ranges, none overlapping the logged synthetic dialogues' seeds."""
    return _SEED_BASE[kind] + cfg.seed * 10_000_000 + i
