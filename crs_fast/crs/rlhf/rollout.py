"""Multi-turn rollouts: the policy talks to simulated users (batched), each system turn opening
with an item token chosen greedily or sampled from the catalog, the users' replies and implicit
feedback recorded per turn; R_phi scores each system turn (and, for the expected item surrogate,
every catalog item at each item-choice state)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ..data.schema import Catalog
from ..data.simulator import UserSimulator
from .config import Config
from .corpus import clip_context
from .lm import items_in, render
from .policy import Policy
from .reward import Scorer


@dataclass
class Episode:
    """One simulated dialogue: token ids, which were sampled by the policy (``gen``; the EOS
    appended to a turn that ran out of tokens is not), where each system turn ends (its EOS), and
    the per-turn reward, simulator feedback and texts."""

    seed: int
    ids: list[int]
    gen: list[int]
    turn_ends: list[int] = field(default_factory=list)
    rewards: list[float] = field(default_factory=list)
    satisfaction: float = 0.0
    accepted: bool = False
    contexts: list[str] = field(default_factory=list)
    responses: list[str] = field(default_factory=list)
    recs: list[list[str]] = field(default_factory=list)
    feedback: list[Any] = field(default_factory=list)  # the simulator's Feedback per system turn
    replies: list[str] = field(default_factory=list)  # the user's answer to each system turn
    features: torch.Tensor | None = None  # R_phi's input per system turn (for OnlineRM)
    turn_starts: list[int] = field(default_factory=list)  # index in ids of each system turn's first token
    item_q: torch.Tensor | None = None  # [turns, I]: R_phi's reward for recommending each item there


def _user_piece(tok, text: str, first: bool) -> list[int]:
    s = f"User: {text}\nSystem:" if first else f"\nUser: {text}\nSystem:"
    return tok(s, add_special_tokens=False)["input_ids"]


@torch.no_grad()
def rollout(
    policy: Policy,
    tok,
    catalog: Catalog,
    seeds: Sequence[int],
    cfg: Config,
    scorer: Scorer | None,
    *,
    sample: bool = True,
    gen_seed: int = 0,
    pool: Sequence[str] | None = None,
    item_values: bool = False,
) -> list[Episode]:
    """Multi-turn dialogues with synthetic users (drawn from ``pool``, see :class:`UserSimulator`):
    the policy writes each system turn (sampling, or greedy when ``sample`` is False), the
    simulator answers, R_phi scores each system turn; with ``item_values`` R_phi also scores
    recommending each catalog item at each system turn (``Episode.item_q``)."""
    policy.eval()
    users = [UserSimulator(catalog, budget=cfg.turns, pool=pool) for _ in seeds]
    eps = []
    for u, s in zip(users, seeds, strict=True):
        first = u.reset(s)
        ids = _user_piece(tok, first, True)
        eps.append(Episode(s, ids, [0] * len(ids)))
    dev = policy.device
    gen = torch.Generator(device=dev).manual_seed(gen_seed)
    eos, pad = tok.eos_token_id, tok.pad_token_id
    for _ in range(cfg.turns):
        live = [i for i, u in enumerate(users) if not u.done]
        if not live:
            break
        ctx = [clip_context(tok, eps[i].ids, cfg.max_context) for i in live]
        L = max(len(c) for c in ctx)
        ids = torch.full((len(live), L), pad, dtype=torch.int64)
        attn = torch.zeros_like(ids)
        for j, c in enumerate(ctx):  # left padding for generation
            ids[j, L - len(c) :] = torch.tensor(c)
            attn[j, L - len(c) :] = 1
        ids, attn = ids.to(dev), attn.to(dev)
        ban = torch.zeros(len(live), len(policy.item_mask), dtype=torch.bool, device=dev)
        if cfg.no_repeat_items:
            for j, i in enumerate(live):
                seen = torch.tensor(eps[i].ids, dtype=torch.int64, device=dev)
                ban[j, seen[policy.item_mask[seen]]] = True
        if cfg.recommend_first:
            first = ban | ~policy.item_mask  # the first token: an item not yet in the dialogue
            if bool(first.all(-1).any()):
                raise ValueError(
                    "recommend_first: every catalog item is already in some dialogue; nothing to open with"
                )
        else:
            first = None
        temp = cfg.temperature if sample else 0.0
        out = _generate(policy, ids, attn, cfg.new_tokens, eos, temp, gen, ban, first_ban=first).cpu()
        for j, i in enumerate(live):
            resp = out[j].tolist()
            forced = eos not in resp  # the turn ran out of tokens: an EOS closes it, not sampled
            resp = resp + [eos] if forced else resp[: resp.index(eos) + 1]
            text = tok.decode(resp[:-1], skip_special_tokens=False).strip()
            items = [x for x in items_in(text) if x in catalog]
            e = eps[i]
            e.contexts.append(tok.decode(e.ids, skip_special_tokens=False))
            e.turn_starts.append(len(e.ids))
            e.responses.append(text)
            e.recs.append(items)
            e.ids += resp
            e.gen += [1] * (len(resp) - forced) + [0] * forced  # PPO scores only what was sampled
            e.turn_ends.append(len(e.ids) - 1)
            reply, fb, done = users[i].step(render(text, catalog), items)
            e.satisfaction, e.accepted = fb.satisfaction, fb.accepted
            e.feedback.append(fb)
            e.replies.append(reply)
            if not done:
                piece = _user_piece(tok, reply, False)
                e.ids += piece
                e.gen += [0] * len(piece)
    if scorer is not None:
        flat = [(e, k) for e in eps for k in range(len(e.responses))]
        if flat:
            r, x = scorer.score([e.contexts[k] for e, k in flat], [e.responses[k] for e, k in flat])
            for (e, _), v in zip(flat, r.tolist(), strict=True):
                e.rewards.append(v)
            for e, part in zip(eps, x.split([len(e.responses) for e in eps]), strict=True):
                e.features = part
            if item_values:  # the same contexts: their embeddings from the turn scoring's features
                q = scorer.item_rewards([e.contexts[k] for e, k in flat], embedded=scorer.rm.context_part(x))
                for e, part in zip(eps, q.split([len(e.responses) for e in eps]), strict=True):
                    e.item_q = part
    return eps


def sampling_bans(
    eps: Sequence[Episode], length: int, item_tokens: set[int], eos: int, cfg: Config
) -> tuple[torch.Tensor, torch.Tensor]:
    """What :func:`rollout` banned when it sampled each token of ``eps`` (one row each; position
    ``t`` predicts token ``t + 1``, ``t < length``): (tokens [B, M], banned [B, length, M]), each
    row's banned vocabulary ids (-1 padding) and whether each was banned at ``t``, as
    :func:`_generate` bans: with ``no_repeat_items`` every item token among ``ids[: t + 1]``; else the
    items generated earlier in the same turn; EOS at a turn's first token without
    ``recommend_first`` (with it, that token's log-prob is the one given an item, apart).
    What :meth:`Policy.logprobs` takes as ``token_ban``."""
    rows: list[dict[int, list[tuple[int, int]]]] = []
    for e in eps:
        spans: dict[int, list[tuple[int, int]]] = {}  # token -> its banned positions (first, last)
        if cfg.no_repeat_items:
            for p, x in enumerate(e.ids):
                if x in item_tokens and x not in spans:
                    spans[x] = [(p, length - 1)]
        else:
            for start, end in zip(e.turn_starts, e.turn_ends, strict=True):
                for p in range(start, end + 1):
                    if e.ids[p] in item_tokens:
                        spans.setdefault(e.ids[p], []).append((p, end - 1))
        if not cfg.recommend_first:
            for start in e.turn_starts:
                spans.setdefault(eos, []).append((start - 1, start - 1))
        rows.append(spans)
    m = max((len(s) for s in rows), default=0)
    tokens = torch.full((len(eps), m), -1, dtype=torch.int64)
    banned = torch.zeros(len(eps), length, m, dtype=torch.bool)
    for b, spans in enumerate(rows):
        for j, (x, where) in enumerate(spans.items()):
            tokens[b, j] = x
            for lo, hi in where:
                banned[b, lo : hi + 1, j] = True
    return tokens, banned


def _step(backbone, head, features, bias=None, **kwargs):
    """One decoder step: (cache, next-token logits after the last position); ``features`` [B, T,
    1 + r] (the policy's context features of the whole sequence so far, or None) are appended
    to the last hidden state, as the head expects; ``bias`` [B, V] (the policy's mention bonus,
    or None) is added to the logits."""
    out = backbone(**kwargs, use_cache=True)
    cache = getattr(out, "cache", None) or getattr(out, "past_key_values", None)
    h = out.last_hidden_state[:, -1]
    if features is not None:
        h = torch.cat([h, features[:, -1].to(h.dtype)], -1)
    logits = h @ head.T
    return cache, logits if bias is None else logits + bias.to(logits.dtype)


def _greedy_first(logits: torch.Tensor, item_ids: torch.Tensor) -> torch.Tensor:
    """Greedy choice of a system turn's first token with "recommend an item" as one action: when
    the item tokens' total probability beats every other token, the most likely item, else the
    most likely other token. (Plain argmax almost never picks an item: the mass that a turn
    should recommend is spread over thousands of item tokens.)"""
    p = torch.softmax(logits.float(), dim=-1)
    is_item = torch.zeros(p.shape[-1], dtype=torch.bool, device=p.device)
    is_item[item_ids] = True
    item_mass = p[:, is_item].sum(-1)
    best_other = p.masked_fill(is_item, -1.0).max(-1)
    best_item = item_ids[p[:, item_ids].argmax(-1)]
    return torch.where(item_mass > best_other.values, best_item, best_other.indices)


def _generate(
    policy: Policy,
    ids,
    attn,
    n: int,
    eos: int,
    temperature: float,
    gen: torch.Generator,
    ban: torch.Tensor | None = None,
    first_ban: torch.Tensor | None = None,
) -> torch.Tensor:
    """Sample ``n`` tokens per row (KV cache through the decoder's forward, the policy's head);
    greedy when temperature is 0. At least one token before EOS (a turn says something); tokens
    where ``ban`` [B, V] is True are never chosen (``first_ban`` [B, V], when given, replaces it
    for the first token: e.g. everything but the items), and item tokens chosen are banned for
    the rest of the turn."""
    import inspect

    backbone, head = policy.backbone(), policy.head()
    dev = ids.device
    ban = torch.zeros(ids.shape[0], head.shape[0], dtype=torch.bool, device=dev) if ban is None else ban.clone()
    cache_kw = "cache" if "cache" in inspect.signature(backbone.forward).parameters else "past_key_values"
    pos = (attn.cumsum(1) - 1).clamp(min=0)
    past, logits = _step(
        backbone,
        head,
        policy.context_features(ids),
        policy.mention_bias(ids),
        input_ids=ids,
        attention_mask=attn,
        position_ids=pos,
    )
    toks = []
    done = torch.zeros(ids.shape[0], dtype=torch.bool, device=dev)
    for step in range(n):
        logits = logits.masked_fill(first_ban if step == 0 and first_ban is not None else ban, float("-inf"))
        if step == 0:
            logits[:, eos] = float("-inf")
        if temperature > 0:
            p = torch.softmax(logits.float() / temperature, dim=-1)
            nxt = torch.multinomial(p, 1, generator=gen).squeeze(1)
        elif not toks:
            nxt = _greedy_first(logits, policy.item_ids)
        else:
            nxt = logits.argmax(-1)
        nxt = torch.where(done, torch.full_like(nxt, eos), nxt)
        toks.append(nxt)
        done |= nxt == eos
        ban[torch.arange(len(nxt), device=dev), nxt] |= policy.item_mask[nxt]
        if bool(done.all()):
            break
        attn = torch.cat([attn, torch.ones_like(attn[:, :1])], 1)
        pos = pos[:, -1:] + 1
        ids = torch.cat([ids, nxt[:, None]], 1)
        past, logits = _step(
            backbone,
            head,
            policy.context_features(ids),
            policy.mention_bias(ids),
            input_ids=nxt[:, None],
            attention_mask=attn,
            position_ids=pos,
            **{cache_kw: past},
        )
    return torch.stack(toks, 1)
