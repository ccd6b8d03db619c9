"""The reward model R_phi on implicit feedback: a frozen sentence encoder, lexical catalog
attribute matches, and one MLP with four heads (dwell, sentiment, engagement, satisfaction);
its training and quality metrics (AUC, Spearman), and the :class:`Scorer` that turns its heads
into one reward per system turn (and per catalog item at item choices)."""

from __future__ import annotations

import math
import pathlib
from collections.abc import Sequence

import torch
from torch import nn

from ..data.labels import feedback_labels
from ..data.schema import Catalog, Dialogue
from .config import Config
from .corpus import prompt, response_text
from .lm import item_token, items_in, render

HEADS = ("dwell", "sentiment", "engagement", "satisfaction")


N_MATCH = 3


def attribute_match(context: str, items: Sequence[str], catalog: Catalog) -> list[float]:
    """Lexical match of the recommended items with the context (lower-cased): whether the
    context names one of an item's genres, one of its director or stars, and whether the turn
    recommends anything. Sentence embeddings blur exactly this (does "comedy" in the request meet
    "comedy" in the item?), so R_phi gets it as three extra inputs."""
    ctx = context.lower()
    known = [catalog[i] for i in items if i in catalog]
    genre = any(g.lower() in ctx for it in known for g in it.attributes.get("genre", []))
    people = any(
        p.lower() in ctx for it in known for k in ("director", "star") for p in it.attributes.get(k, []) if len(p) > 3
    )
    return [float(genre), float(people), float(bool(known))]


class CatalogMatch:
    """:func:`attribute_match` of one context with every catalog item at once (each item alone):
    [I, 3] per context, in catalog order. The genre and people strings are searched in the
    context once each, then gathered per item, instead of once per (item, value)."""

    def __init__(self, catalog: Catalog) -> None:
        ids = catalog.ids()
        kinds = {"genre": ("genre",), "people": ("director", "star")}
        self.values: dict[str, list[str]] = {}
        self.pairs: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        for name, keys in kinds.items():
            vocab: dict[str, int] = {}
            items, vals = [], []
            for n, i in enumerate(ids):
                for k in keys:
                    for v in catalog[i].attributes.get(k, []):
                        if name == "people" and len(v) <= 3:
                            continue
                        items.append(n)
                        vals.append(vocab.setdefault(v.lower(), len(vocab)))
            self.values[name] = list(vocab)
            self.pairs[name] = (torch.tensor(items, dtype=torch.int64), torch.tensor(vals, dtype=torch.int64))
        self.n = len(ids)

    def __call__(self, context: str) -> torch.Tensor:
        """[I, 3]: (the context names one of the item's genres, one of its director or stars, 1)."""
        ctx = context.lower()
        out = torch.zeros(self.n, N_MATCH)
        out[:, 2] = 1.0
        for col, name in enumerate(("genre", "people")):
            present = torch.tensor([v in ctx for v in self.values[name]], dtype=torch.float32)
            items, vals = self.pairs[name]
            if len(items):
                out[:, col] = torch.zeros(self.n).index_add_(0, items, present[vals]).clamp(max=1.0)
        return out


class RewardModel(nn.Module):
    """R_phi: heads over frozen sentence embeddings of (context, response) and
    :func:`attribute_match` features."""

    def __init__(self, dim: int = 384, hidden: int = 128) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4 * dim + N_MATCH, hidden), nn.GELU(), nn.Linear(hidden, len(HEADS)))
        self.register_buffer("dwell_mu", torch.zeros(()))
        self.register_buffer("dwell_sd", torch.ones(()))
        self.register_buffer("weights", torch.tensor([0.25, 1.0, 0.5, 0.5]))

    @staticmethod
    def features(c: torch.Tensor, r: torch.Tensor, match: torch.Tensor) -> torch.Tensor:
        return torch.cat([c, r, c * r, (c - r).abs(), match], dim=-1)

    def context_part(self, x: torch.Tensor) -> torch.Tensor:
        """The context embeddings ``c`` inside :meth:`features` ``x`` [n, D]."""
        return x[:, : (self.net[0].in_features - N_MATCH) // 4]

    def forward(self, c: torch.Tensor, r: torch.Tensor, match: torch.Tensor) -> torch.Tensor:
        """Head outputs [n, 4]: dwell (z-scored), sentiment, engagement logit, satisfaction."""
        return self.net(self.features(c, r, match))

    def reward(self, c: torch.Tensor, r: torch.Tensor, match: torch.Tensor) -> torch.Tensor:
        """The scalar reward: w . (dwell_z, tanh sentiment, 2 sigmoid(engage) - 1, satisfaction)."""
        return self.reward_of(self.features(c, r, match))

    def reward_of(self, x: torch.Tensor) -> torch.Tensor:
        """:meth:`reward` from precomputed :meth:`features` ``x``."""
        o = self.net(x)
        parts = torch.stack([o[:, 0], torch.tanh(o[:, 1]), 2 * torch.sigmoid(o[:, 2]) - 1, o[:, 3]], dim=-1)
        return parts @ self.weights


def rm_examples(dialogues: Sequence[Dialogue], catalog: Catalog) -> list[tuple]:
    """(context, response with item details, [dwell, sentiment, engaged, satisfaction],
    attribute_match) per system turn, from the weak implicit-feedback labels (ReDial format, real
    or synthetic)."""
    labels = {(x.dialogue_id, x.turn_index): x for x in feedback_labels(dialogues)}
    out = []
    for d in dialogues:
        for i, t in enumerate(d.turns):
            lab = labels.get((d.id, i))
            if t.role != "system" or i == 0 or lab is None:
                continue
            sent = lab.sentiment_liked if lab.sentiment_liked is not None else lab.sentiment_text
            sat = lab.satisfaction
            context = render(prompt(d.turns[:i], catalog), catalog)
            out.append(
                (
                    context,
                    render(response_text(t, catalog).strip(), catalog, details=True),
                    [None if lab.dwell is None else math.log1p(lab.dwell), sent, float(lab.engaged), sat],
                    attribute_match(context, t.items, catalog),
                )
            )
    return out


def _auc(score: torch.Tensor, label: torch.Tensor) -> float:
    pos, neg = score[label > 0.5], score[label <= 0.5]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    return float((pos[:, None] > neg[None, :]).float().mean() + 0.5 * (pos[:, None] == neg[None, :]).float().mean())


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman rank correlation (average ranks not needed: ties are rare in continuous data)."""
    if len(a) < 3:
        return float("nan")
    ra, rb = a.argsort().argsort().double(), b.argsort().argsort().double()
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra * rb).sum() / (ra.norm() * rb.norm()).clamp(min=1e-12))


def rm_loss(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """R_phi's training loss over the labelled entries of ``y`` [n, 4] (NaN = missing): MSE for
    dwell, sentiment and satisfaction, BCE (on the logit) for engagement, summed over heads."""
    loss = out.new_zeros(())
    for h in range(len(HEADS)):
        ok = ~y[:, h].isnan()
        if ok.any():
            if h == 2:
                loss = loss + nn.functional.binary_cross_entropy_with_logits(out[ok, h], y[ok, h])
            else:
                loss = loss + nn.functional.mse_loss(out[ok, h], y[ok, h])
    return loss


def train_reward_model(encoder, train: Sequence, valid: Sequence, cfg: Config) -> tuple[RewardModel, dict[str, float]]:
    """Fit R_phi on ``train`` examples (:func:`rm_examples`), report held-out quality on ``valid``:
    Spearman for dwell, sentiment and satisfaction, AUC for engagement."""
    torch.manual_seed(cfg.seed)

    def tensors(ex):
        c = encoder.encode([e[0] for e in ex])
        r = encoder.encode([e[1] for e in ex])
        y = torch.tensor([[float("nan") if v is None else v for v in e[2]] for e in ex], dtype=torch.float32)
        match = torch.tensor([e[3] for e in ex], dtype=torch.float32).reshape(len(ex), N_MATCH)
        return c, r, y, match

    c, r, y, match = tensors(train)
    rm = RewardModel(dim=c.shape[1])
    rm.weights.copy_(torch.tensor([cfg.w_dwell, cfg.w_sentiment, cfg.w_engagement, cfg.w_satisfaction]))
    d = y[:, 0][~y[:, 0].isnan()]
    if len(d) > 1:
        rm.dwell_mu.fill_(float(d.mean()))
        rm.dwell_sd.fill_(float(d.std().clamp(min=1e-6)))
    y[:, 0] = (y[:, 0] - rm.dwell_mu) / rm.dwell_sd
    sat = y[:, 3][~y[:, 3].isnan()]
    if len(sat):  # satisfaction scales differ by source (ratings, rewards per turn): to [0, 1]
        lo, hi = float(sat.min()), float(sat.max())
        y[:, 3] = (y[:, 3] - lo) / max(hi - lo, 1e-6)
    opt = torch.optim.AdamW(rm.parameters(), lr=cfg.rm_lr, weight_decay=1e-4)
    x = rm.features(c, r, match)
    for _ in range(cfg.rm_epochs):
        perm = torch.randperm(len(x))
        for i in range(0, len(x), 256):
            idx = perm[i : i + 256]
            loss = rm_loss(rm.net(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    rm.train_x, rm.train_y = x, y  # kept for the online refits during PPO
    rm.eval()
    quality: dict[str, float] = {}
    if valid:
        vc, vr, vy, vm = tensors(valid)
        with torch.no_grad():
            out = rm(vc, vr, vm)
        vy[:, 0] = (vy[:, 0] - rm.dwell_mu) / rm.dwell_sd
        for h, name in enumerate(HEADS):
            ok = ~vy[:, h].isnan()
            key = "engagement_auc" if h == 2 else f"{name}_spearman"
            if ok.sum() < 3:
                quality[key] = None  # too few labels
            elif h == 2:
                quality[key] = _auc(out[ok, h], vy[ok, h])
            else:
                quality[key] = spearman(out[ok, h], vy[ok, h])
            if quality[key] is not None and math.isnan(quality[key]):
                quality[key] = None  # one class only (AUC undefined)
        quality["n_valid"] = len(valid)
    quality["n_train"] = len(train)
    return rm, quality


class Scorer:
    """R_phi on text: reward of a rendered (context, response); and of recommending each catalog
    item in a context (:meth:`item_rewards`).

    ``item_cache`` (a safetensors path) keeps the items' sentence embeddings between runs: they
    are computed on the first :meth:`item_rewards` call otherwise (every catalog item rendered
    with its details, as R_phi sees a recommendation)."""

    def __init__(self, rm: RewardModel, encoder, catalog: Catalog, item_cache: pathlib.Path | None = None) -> None:
        self.rm, self.encoder, self.catalog = rm, encoder, catalog
        self.item_cache = item_cache
        self._items: torch.Tensor | None = None
        self._match: CatalogMatch | None = None

    def item_encodings(self) -> torch.Tensor:
        """[I, D] sentence embeddings of every catalog item as a response (title and details); the
        cache is used only when it was written for the same rendered items."""
        if self._items is None:
            import hashlib

            from safetensors import safe_open
            from safetensors.torch import save_file

            texts = [render(item_token(i), self.catalog, details=True) for i in self.catalog.ids()]
            key = hashlib.sha256("\n".join(texts).encode()).hexdigest()
            if self.item_cache is not None and self.item_cache.exists():
                with safe_open(str(self.item_cache), framework="pt") as f:
                    if (f.metadata() or {}).get("items") == key:
                        self._items = f.get_tensor("items")
            if self._items is None:
                self._items = self.encoder.encode(texts).float()
                if self.item_cache is not None:
                    self.item_cache.parent.mkdir(parents=True, exist_ok=True)
                    tmp = self.item_cache.with_name(self.item_cache.name + ".tmp")
                    save_file({"items": self._items.contiguous()}, str(tmp), metadata={"items": key})
                    tmp.replace(self.item_cache)
        return self._items

    @torch.no_grad()
    def item_rewards(self, contexts: list[str], embedded: torch.Tensor | None = None) -> torch.Tensor:
        """[n, I]: R_phi's reward for a system turn that recommends catalog item i (alone, shown
        with its details) after each context, for every item: the action values of the item
        choice that :func:`ppo_update`'s expected surrogate uses. ``embedded`` [n, D]: the
        contexts' sentence embeddings when already computed (e.g. by :meth:`score`)."""
        items = self.item_encodings()
        if self._match is None:
            self._match = CatalogMatch(self.catalog)
        ctx = [render(x, self.catalog) for x in contexts]
        c = (self.encoder.encode(ctx) if embedded is None else embedded).float()
        out = torch.empty(len(ctx), items.shape[0])
        for j, text in enumerate(ctx):
            x = self.rm.features(c[j].expand(items.shape[0], -1), items, self._match(text))
            out[j] = self.rm.reward_of(x)
        return out

    def __call__(self, contexts: list[str], responses: list[str]) -> torch.Tensor:
        """Rewards [n]."""
        return self.score(contexts, responses)[0]

    @torch.no_grad()
    def score(self, contexts: list[str], responses: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(rewards [n], R_phi's input features [n, F]: what :class:`OnlineRM` refits on)."""
        ctx = [render(x, self.catalog) for x in contexts]
        c = self.encoder.encode(ctx)
        r = self.encoder.encode([render(x, self.catalog, details=True) for x in responses])
        match = torch.tensor(
            [attribute_match(x, items_in(y), self.catalog) for x, y in zip(ctx, responses, strict=True)],
            dtype=torch.float32,
        ).reshape(len(ctx), N_MATCH)
        x = self.rm.features(c, r, match)
        return self.rm.reward_of(x), x
