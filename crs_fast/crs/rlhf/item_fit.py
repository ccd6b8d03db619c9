"""The item fit: the policy's item parts fitted on the real training dialogues' recommendations,
early-stopped on the validation dialogues.

SFT learns the item rows through the next-token loss of whole responses, half of its batches from
synthetic users; on ReDial that cost the untrained policy's validation Recall@10 0.034, all of it
in the learned item rows (docs/results/ppo-erosion-2026-11-30). This step, run after SFT, fits
the item parts alone (item rows ``item_out``, attribute embeddings, item bias, mention bonus) with
the hidden states fixed, by the cross-entropy of each real recommended item over the catalog:

    L = - mean_{(c, i)} log softmax_j(q_c . r_j + rho [j in S_c])_i

``q_c`` is :meth:`Policy.next_query` after the context ``c`` (hidden state and co-occurrence
features, computed once), ``r_j`` the item's row of the head, ``S_c`` the items the context
mentions; AdamW with decoupled weight decay on the rows and attribute embeddings. After every
epoch the validation ranking is measured (the mean of standard and dedup Recall@10, the figures
the evaluation reports) and the best epoch's parameters are kept, epoch 0 (the parameters as
given) included: the fit never leaves the policy worse on the validation samples than it found it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from . import mention
from .config import Config
from .corpus import clip_context, pad_right
from .evaluate import Sample, real_samples
from .policy import ITEM_PARTS, Policy


@dataclass
class Queries:
    """What the item scores of a set of samples need, the policy's hidden states fixed.

    ``q`` [P, D]: the query after each distinct prompt; ``ment`` [P, M]: the catalog indices its
    clipped tokens mention (-1 padding; what the mention bonus marks); ``named``, ``named_w`` [P,
    K]: the items of the context bonus without the mention bonus (the people it names, the
    neighbour bonus) and their bonus (-1 / 0 padding; None without either); per sample ``prompt``
    [N] (row of ``q``), ``target`` [N] (catalog index) and
    ``banned`` [N, K] (the sample's mentioned items, -1 padding: what the dedup protocol excludes)."""

    q: torch.Tensor
    ment: torch.Tensor
    prompt: torch.Tensor
    target: torch.Tensor
    banned: torch.Tensor
    named: torch.Tensor | None = None
    named_w: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.target)


def _pad(rows: Sequence[Sequence[float]], fill: float = -1, dtype: torch.dtype = torch.int64) -> torch.Tensor:
    width = max((len(r) for r in rows), default=0)
    out = torch.full((len(rows), max(width, 1)), fill, dtype=dtype)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.tensor(list(r), dtype=dtype)
    return out


@torch.no_grad()
def queries(
    policy: Policy,
    tok,
    samples: Sequence[Sample],
    index: dict[str, int],
    cfg: Config,
    batch: int = 16,
    progress: Callable[[int], None] | None = None,
    hidden: bool = True,
) -> Queries:
    """:class:`Queries` of ``samples`` (``index``: item id -> catalog index): one forward of the
    policy per distinct prompt, ``batch`` prompts at a time (``progress(n)`` after each). With
    ``hidden=False`` the hidden-state part of each query is zero and no forward runs (only the
    co-occurrence features, read from the tokens): exact while the item rows' hidden-state part is
    zero, as in the untrained policy (``item_out`` and the attribute embeddings start at zero)."""
    prompts = list(dict.fromkeys(s.prompt for s in samples))
    where = {p: n for n, p in enumerate(prompts)}
    seqs = [clip_context(tok, tok(p, add_special_tokens=False)["input_ids"], cfg.max_context) for p in prompts]
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))  # batches of similar lengths: little padding
    dev = policy.device
    q = torch.zeros(len(seqs), policy.item_rows().shape[1], device=dev)
    ments: list[list[int]] = [[] for _ in seqs]
    named: list[tuple[list[int], list[float]]] = [([], []) for _ in seqs]
    for i in range(0, len(order), batch):
        rows = order[i : i + batch]
        ids, attn = pad_right([seqs[r] for r in rows], tok.pad_token_id, dev)
        if hidden:
            q[rows] = policy.next_query(ids, attn).float()
        elif policy.item_bias is not None:  # [0, context features] after each row's last token
            feats = policy.context_features(ids)[torch.arange(len(rows), device=dev), attn.sum(1) - 1]
            q[rows, q.shape[1] - feats.shape[1] :] = feats.float()
        items, _ = policy.mentioned_items(ids)
        for r, found in zip(rows, items.cpu().tolist(), strict=True):
            ments[r] = [x for x in found if x >= 0]
        people = policy.context_bonus(ids, mentions=False)
        if people is not None:
            last = people[1][torch.arange(len(rows), device=dev), attn.sum(1) - 1]
            for r, it, w in zip(rows, people[0].cpu().tolist(), last.cpu().tolist(), strict=True):
                named[r] = ([x for x in it if x >= 0], [v for x, v in zip(it, w, strict=True) if x >= 0])
        if progress:
            progress(len(rows))
    bonus = policy.people is not None or policy.neighbours is not None  # the context bonus without beta
    return Queries(
        q=q,
        ment=_pad(ments).to(dev),
        prompt=torch.tensor([where[s.prompt] for s in samples], dtype=torch.int64, device=dev),
        target=torch.tensor([index[s.target] for s in samples], dtype=torch.int64, device=dev),
        banned=_pad([[index[m] for m in s.mentioned if m in index] for s in samples]).to(dev),
        named=_pad([n[0] for n in named]).to(dev) if bonus else None,
        named_w=_pad([n[1] for n in named], 0.0, torch.float32).to(dev) if bonus else None,
    )


def split(data: Queries, n: int) -> tuple[Queries, Queries]:
    """The first ``n`` samples and the rest, sharing the prompts' queries."""
    a, b = (slice(None, n), slice(n, None))
    return tuple(
        Queries(data.q, data.ment, data.prompt[w], data.target[w], data.banned[w], data.named, data.named_w)
        for w in (a, b)
    )


def _marks(ment: torch.Tensor, n: int) -> torch.Tensor:
    """[B, n] float: 1 at each row's mentioned catalog indices (``ment`` [B, M], -1 padding)."""
    rows = torch.arange(len(ment), device=ment.device)
    return mention.item_marks(ment, torch.zeros_like(ment), rows, torch.zeros_like(rows), n)


def item_logits(policy: Policy, data: Queries, rows: torch.Tensor | None = None, which=slice(None)) -> torch.Tensor:
    """[n, I] float32: the item scores of the samples ``which`` (``q . r_j + rho [j mentioned]``
    plus the people bonus), differentiable in the policy's item parts (``rows``:
    :meth:`Policy.item_rows` if None)."""
    rows = policy.item_rows().float() if rows is None else rows
    p = data.prompt[which]
    logits = data.q[p] @ rows.T
    if policy.item_repeat is not None:
        logits = logits + _marks(data.ment[p], rows.shape[0]) * policy.item_repeat.float()
    if data.named is not None:
        logits = logits + mention.scatter_bonus(data.named[p], data.named_w[p], rows.shape[0])
    return logits


@torch.no_grad()
def recall(policy: Policy, data: Queries, k: int = 10, dedup: bool = False) -> float:
    """Recall@``k`` of the samples' targets under the policy's item scores (ties counted against
    the target); ``dedup``: each sample's mentioned items excluded from the ranking."""
    if not len(data):
        return 0.0
    logits = item_logits(policy, data)
    if dedup:
        logits = logits.masked_fill(_marks(data.banned, logits.shape[1]).bool(), float("-inf"))
    target = logits.gather(1, data.target[:, None])
    rank = (logits >= target).sum(1) - 1
    return float((rank < k).float().mean())


def fit_items(
    policy: Policy,
    train: Queries,
    valid: Queries,
    valid_dedup: Queries,
    cfg: Config,
    progress: Callable[[int, dict], None] | None = None,
    k: int = 10,
    parts: tuple[str, ...] = ITEM_PARTS,
) -> list[dict]:
    """Fit the policy's item parts on ``train`` for ``cfg.item_fit_epochs`` epochs (minibatches
    of ``cfg.item_fit_batch``, AdamW at ``cfg.item_fit_lr``, weight decay ``cfg.item_fit_wd`` on the
    rows and attribute embeddings) and keep the epoch (0 = as given) with the best
    ``(valid R@k + valid_dedup dedup R@k) / 2``. ``parts``: the names (prefixes) of the item
    parameters that train (the others stay as given). Returns one metrics row per epoch."""
    named = {n: p for n, p in policy.named_parameters() if n.startswith(parts)}
    if not named or not len(train):
        return []
    decay = [p for n, p in named.items() if n.startswith(("item_attr.", "item_out"))]
    other = [p for n, p in named.items() if not n.startswith(("item_attr.", "item_out"))]
    groups = [{"params": decay, "weight_decay": cfg.item_fit_wd}, {"params": other, "weight_decay": 0.0}]
    groups = [g for g in groups if g["params"]]
    opt = (
        torch.optim.SGD(groups, lr=cfg.item_fit_lr, momentum=0.9)
        if cfg.item_fit_opt == "sgd"
        else torch.optim.AdamW(groups, lr=cfg.item_fit_lr)
    )
    for p in named.values():
        p.requires_grad_(True)

    def score() -> dict:
        std, ded = recall(policy, valid, k), recall(policy, valid_dedup, k, dedup=True)
        return {f"valid_recall@{k}": std, f"valid_dedup_recall@{k}": ded, "valid_score": (std + ded) / 2}

    history = [{"epoch": 0, "train_loss": None, **score()}]
    if progress:
        progress(0, history[0])
    best = (history[0]["valid_score"], 0, {n: p.detach().clone() for n, p in named.items()})
    g = torch.Generator().manual_seed(cfg.seed)
    for epoch in range(1, cfg.item_fit_epochs + 1):
        order, total = torch.randperm(len(train), generator=g), 0.0
        for i in range(0, len(train), cfg.item_fit_batch):
            which = order[i : i + cfg.item_fit_batch]
            loss = torch.nn.functional.cross_entropy(item_logits(policy, train, which=which), train.target[which])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(which)
        row = {"epoch": epoch, "train_loss": total / len(train), **score()}
        history.append(row)
        if row["valid_score"] > best[0]:
            best = (row["valid_score"], epoch, {n: p.detach().clone() for n, p in named.items()})
        if progress:
            progress(epoch, row)
    with torch.no_grad():
        for n, p in named.items():
            p.copy_(best[2][n])
    for row in history:
        row["chosen"] = row["epoch"] == best[1]
    return history


def draw_contexts(samples: Sequence[Sample], n: int, seed: int) -> list[Sample]:
    """The samples of ``n`` distinct contexts drawn without replacement (seeded), in their order;
    all of them with ``n = 0``."""
    if not n:
        return list(samples)
    prompts = list(dict.fromkeys(s.prompt for s in samples))
    g = torch.Generator().manual_seed(seed)
    kept = {prompts[i] for i in torch.randperm(len(prompts), generator=g)[:n].tolist()}
    return [s for s in samples if s.prompt in kept]


def fit_info(row: dict) -> str:
    """One epoch's validation figures on one line (progress bars)."""
    return f"valid R@10 {row['valid_recall@10']:.3f}, dedup {row['valid_dedup_recall@10']:.3f}"


def fit_on_real(
    policy: Policy,
    tok,
    data,
    cfg: Config,
    progress: Callable[[str, int, int], None] | None = None,
    on_epoch: Callable[[int, dict], None] | None = None,
) -> list[dict]:
    """:func:`fit_items` on the real training dialogues' recommendation samples (at most
    ``cfg.item_fit_contexts`` contexts, a seeded draw; 0: all), early-stopped on the real
    validation dialogues'. Nothing happens (returns []) with ``item_fit_epochs = 0``, or without
    real training or validation dialogues. ``progress(phase, done, total)`` reports the forwards,
    ``on_epoch(epoch, row)`` the epochs."""
    real = [d for d in data.train if not d.id.startswith("synth")]
    if cfg.item_fit_epochs <= 0 or not real or not data.real_valid:
        return []
    final = data.dataset == "opendialkg"  # what the evaluation ranks there
    train_s = draw_contexts(real_samples(real, data.catalog, dedup=False), cfg.item_fit_contexts, cfg.seed)
    std_s = real_samples(data.real_valid, data.catalog, dedup=False, final_only=final)
    ded_s = real_samples(data.real_valid, data.catalog, dedup=True, final_only=final)
    index = {i: n for n, i in enumerate(data.catalog.ids())}
    policy.eval()
    sets = []
    for name, samples in (("train", train_s), ("valid", std_s + ded_s)):
        total, done = len({s.prompt for s in samples}), [0]

        def step(n: int, name=name, total=total, done=done) -> None:
            done[0] += n
            if progress:
                progress(name, done[0], total)

        sets.append(queries(policy, tok, samples, index, cfg, progress=step))
    return fit_items(policy, sets[0], *split(sets[1], len(std_s)), cfg, progress=on_epoch)
