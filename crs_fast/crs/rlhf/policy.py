"""The policy: a causal LM whose catalog items are added tokens, with a value head. Log-probs come
from ``crs_fast.linear_logprobs`` on the final hidden states and the LM head (no [N, V] logits),
the catalog ranking from ``crs_fast.topk_scores`` over the item rows of the LM head; only the
top ``train_layers`` decoder layers train, over a frozen trunk computed once per batch. With
co-occurrence factors the head gains 1 + r columns (a learned item bias and the collaborative
score), with genre cues G more, and every hidden state the matching context features."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ... import ops
from . import collab as collab_mod
from . import cues as cues_mod
from . import mention
from . import people as people_mod

ITEM_PARTS = ("item_attr.", "item_bias", "item_out", "item_repeat")  # names of the item parameters (new, at item_lr)


class _StopTrunk(Exception):
    """Raised by the pre-hook of the first trained layer: the trunk's output is captured."""


class Policy(nn.Module):
    """A causal LM with item tokens and a value head on its final hidden states.

    ``train_layers = n > 0`` trains only the top ``n`` decoder layers, the final norm, an untied
    copy of the LM head and the value head: the frozen trunk's activations (embeddings and the
    lower layers) are computed once per batch without gradients and shared by the policy, the
    reference and the value head (:meth:`trunk`, then :meth:`top`). ``n = 0`` trains everything.

    ``item_attrs`` (per item, in ``item_ids`` order, (index, weight) of its attribute values, as
    from :func:`item_attribute_index`) adds a learned content part to each item's LM-head row:
    ``w_i = w_i^token + sum_{a in attrs(i)} weight_a e_a`` with every ``e_a`` starting at zero, so the
    model starts exactly as built (rows = title means) and what it learns about one comedy
    carries to every comedy, where independent rows would each need their own samples.

    ``collab = (P, Q)`` (each [I, r], from :func:`~crs_fast.crs.rlhf.collab.cooccurrence_factors`)
    adds the training dialogues' co-occurrence and a per-item prior to every item's logit: the
    next-token logit of item ``i`` after position ``t`` becomes

        h_t . w_i + b_i + collab_weight * (sum_{c in S_t} P_c) . Q_i

    with ``S_t`` the distinct items among the tokens up to ``t`` and ``b`` a learned bias
    (:attr:`item_bias`, from ``item_prior``, else zero; :func:`build_policy` gives
    ``cfg.item_prior * log(1 + training mentions)``). It is one linear head over augmented states,
    ``[h_t, 1, sum P_c] . [w_i, b_i, collab_weight Q_i]`` (zeros in the new columns for text), so
    ``linear_logprobs``, ``topk_scores`` and generation score it exactly. ``P`` and ``Q`` are
    fixed (fitting them on the dialogues they were counted on memorises). The items' output rows
    ``w_i`` are then their own parameters (:attr:`item_out`) starting at zero: the policy starts
    as the co-occurrence recommender (title-mean rows drowned its score; docs/recommender.md).

    ``collab_decay = g < 1`` weighs the context's items by recency: ``sum_{c in S_t} g^age_c P_c``
    with ``age_c`` the number of distinct items first mentioned after ``c``
    (:func:`~crs_fast.crs.rlhf.collab.decayed_sums`). ``cues = (token_cue [V], A [I, G])`` adds the
    genres the dialogue's words name, ``cue_weight * sum_g [g named up to t] A_ig``, as ``G`` more
    columns (:mod:`~crs_fast.crs.rlhf.cues`; with ``collab`` only).

    ``mention_bonus = beta`` (not None) adds a learned scalar :attr:`item_repeat` (starting at
    ``beta``) to the logit of every item already mentioned, ``+ beta [i in S_t]``: recommenders
    re-mention items (about a tenth of ReDial's recommendation samples), which no low-rank term
    expresses. ``people = (name_table, B [I, P])`` adds the people named so far, ``people_weight *
    sum_p [p named up to t] B_ip`` (:mod:`~crs_fast.crs.rlhf.people`); :attr:`neighbours` (set after
    construction) what recommenders answered to similar requests (:mod:`~crs_fast.crs.rlhf.neighbours`).
    They make the context bonus (:meth:`context_bonus`), exact on top of the fused head
    (:mod:`~crs_fast.crs.rlhf.mention`). Decoding with ``no_repeat_items`` bans the mentioned items;
    PPO then scores what was sampled with the same bans (``token_ban``).
    """

    def __init__(
        self,
        lm: nn.Module,
        item_ids: torch.Tensor,
        train_layers: int = 0,
        item_attrs: list[list[tuple[int, float]]] | None = None,
        collab: tuple[torch.Tensor, torch.Tensor] | None = None,
        collab_weight: float = 1.0,
        mention_bonus: float | None = None,
        item_prior: torch.Tensor | None = None,
        collab_decay: float = 1.0,
        cues: tuple[torch.Tensor, torch.Tensor] | None = None,
        cue_weight: float = 1.0,
        people: tuple[dict[str, torch.Tensor], torch.Tensor] | None = None,
        people_weight: float = 1.0,
    ) -> None:
        super().__init__()
        self.lm = lm
        hidden = lm.config.hidden_size
        self.value_head = nn.Linear(hidden, 1)
        nn.init.zeros_(self.value_head.weight), nn.init.zeros_(self.value_head.bias)
        self.register_buffer("item_ids", item_ids.clone(), persistent=False)
        index = torch.full((lm.get_output_embeddings().weight.shape[0],), -1, dtype=torch.int64)
        index[item_ids] = torch.arange(len(item_ids))
        self.register_buffer("item_index", index, persistent=False)  # [V]: catalog index of each token, -1 if none
        self.register_buffer("item_mask", index >= 0, persistent=False)  # [V]: which tokens are items
        layers = self.backbone().layers
        if not 0 <= train_layers <= len(layers):
            raise ValueError(f"train_layers must be in [0, {len(layers)}], got {train_layers}")
        self.train_layers = train_layers
        self.out_head: nn.Parameter | None = None
        if train_layers:
            for p in lm.parameters():
                p.requires_grad_(False)
            for p in [*layers[len(layers) - train_layers :].parameters(), *self.backbone().norm.parameters()]:
                p.requires_grad_(True)
            self.out_head = nn.Parameter(lm.get_output_embeddings().weight.detach().clone())
        self.item_attr: nn.EmbeddingBag | None = None
        if item_attrs is not None:
            if len(item_attrs) != len(item_ids):
                raise ValueError(f"item_attrs has {len(item_attrs)} entries for {len(item_ids)} items")
            n_values = max((v for a in item_attrs for v, _ in a), default=-1) + 1
            self.item_attr = nn.EmbeddingBag(max(n_values, 1), hidden, mode="sum")
            nn.init.zeros_(self.item_attr.weight)
            flat = torch.tensor([v for a in item_attrs for v, _ in a], dtype=torch.int64)
            weights = torch.tensor([w for a in item_attrs for _, w in a], dtype=torch.float32)
            offsets = torch.tensor([0, *torch.tensor([len(a) for a in item_attrs]).cumsum(0)[:-1].tolist()])
            self.register_buffer("attr_values", flat, persistent=False)
            self.register_buffer("attr_weights", weights, persistent=False)
            self.register_buffer("attr_offsets", offsets.to(torch.int64), persistent=False)
        self.item_bias: nn.Parameter | None = None
        if collab is not None:
            p, q = collab
            if p.ndim != 2 or p.shape != q.shape or p.shape[0] != len(item_ids):
                raise ValueError(f"collab factors must both be [{len(item_ids)}, r]; got {p.shape} and {q.shape}")
            self.register_buffer("collab_p", p.detach().float().clone())
            self.register_buffer("collab_q", (collab_weight * q.detach()).float().clone())
            if item_prior is not None and tuple(item_prior.shape) != (len(item_ids),):
                raise ValueError(f"item_prior must be [{len(item_ids)}], got {tuple(item_prior.shape)}")
            prior = torch.zeros(len(item_ids)) if item_prior is None else item_prior.detach().float().clone()
            self.item_bias = nn.Parameter(prior)
            self.item_out = nn.Parameter(torch.zeros(len(item_ids), hidden))
        if not 0 < collab_decay <= 1:
            raise ValueError(f"collab_decay must be in (0, 1], got {collab_decay}")
        self.collab_decay = float(collab_decay)
        cue_cols = torch.zeros(len(item_ids), 0)
        if cues is not None:
            if collab is None or tuple(cues[0].shape) != (len(index),) or cues[1].shape[0] != len(item_ids):
                raise ValueError(f"cues need collab factors, token_cue [{len(index)}] and A [{len(item_ids)}, G]")
            if not (torch.isfinite(cues[1]).all() and torch.isfinite(torch.tensor(float(cue_weight)))):
                raise ValueError(f"cue_weight and the cue weights A must be finite, got cue_weight={cue_weight}")
            self.register_buffer("token_cue", cues[0].to(torch.int64).clone(), persistent=False)
            cue_cols = cue_weight * cues[1].detach().float()
        self.register_buffer("cue_cols", cue_cols.clone(), persistent=False)  # [I, G]: cue_weight * A; G = 0: none
        self.item_repeat: nn.Parameter | None = None
        if mention_bonus is not None:
            if not torch.isfinite(torch.tensor(float(mention_bonus))):
                raise ValueError(f"mention_bonus must be finite, got {mention_bonus}")
            self.item_repeat = nn.Parameter(torch.tensor(float(mention_bonus)))
        self.people = None if people is None else people_mod.PeopleBonus(*people, people_weight, len(item_ids))
        self.neighbours: nn.Module | None = None  # a neighbours.NeighbourBonus (build_policy sets it)

    @property
    def device(self) -> torch.device:
        """Where the policy's parameters are (inputs are moved there)."""
        return self.value_head.weight.device

    def backbone(self) -> nn.Module:
        """The decoder stack (under a PEFT wrapper too)."""
        base = self.lm.get_base_model() if hasattr(self.lm, "get_base_model") else self.lm
        return base.model

    def _token_head(self) -> torch.Tensor:
        """The token rows of the LM head [V, H]: the trainable untied copy when training the top
        layers, else the model's own."""
        return self.out_head if self.out_head is not None else self.lm.get_output_embeddings().weight

    def _item_content(self) -> torch.Tensor:
        """The learned attribute part of the item rows [I, H] (only with item features)."""
        return self.item_attr(self.attr_values, self.attr_offsets, per_sample_weights=self.attr_weights)

    def _item_extra(self) -> torch.Tensor:
        """The items' extra head columns [I, 1 + r + G]: bias, ``collab_weight * Q``, the cue columns."""
        return torch.cat([self.item_bias[:, None], self.collab_q, self.cue_cols], 1)

    def head(self) -> torch.Tensor:
        """The LM head's weight [V, H (+ 1 + r + G)]: the items' attribute part added to their rows
        when the policy has one; with co-occurrence factors, the item rows from :attr:`item_out`
        and the bias and co-occurrence columns (zero for text tokens)."""
        w = self._token_head()
        if self.item_bias is None and self.item_attr is None:
            return w
        if self.item_bias is not None:  # one copy of the token rows, then the item rows written in place
            w = torch.cat([w, w.new_zeros(w.shape[0], self.item_bias_dims())], 1)
        else:
            w = w.clone()
        return w.index_copy_(0, self.item_ids, self.item_rows().to(w.dtype))

    def item_bias_dims(self) -> int:
        """How many columns the co-occurrence part (bias, factors, genre cues) adds to the head (0 without it)."""
        return 0 if self.item_bias is None else 1 + self.collab_p.shape[1] + self.cue_cols.shape[1]

    def item_rows(self) -> torch.Tensor:
        """The item rows of :meth:`head` [I, H (+ 1 + r + G)], without building the whole head."""
        rows = self._token_head()[self.item_ids] if self.item_bias is None else self.item_out
        if self.item_attr is not None:
            rows = rows + self._item_content().to(rows.dtype)
        return rows if self.item_bias is None else torch.cat([rows, self._item_extra().to(rows.dtype)], 1)

    def context_features(self, input_ids: torch.Tensor) -> torch.Tensor | None:
        """The states' extra features [B, T, 1 + r + G] (None without co-occurrence factors): at
        position ``t``, 1, the (recency-weighted) sum of ``P`` over the distinct items among
        ``input_ids[:, :t+1]`` and the genres named so far (padding is not an item, so either side
        of padding works)."""
        if self.item_bias is None:
            return None
        B, T = input_ids.shape
        if self.collab_decay == 1.0:
            at, item = mention.first_mentions(self.item_index, input_ids)
            rows = torch.zeros(B * T, self.collab_p.shape[1], dtype=self.collab_p.dtype, device=input_ids.device)
            rows[at] = self.collab_p[item]
            sums = rows.view(B, T, -1).cumsum(1)
        else:
            sums = collab_mod.decayed_sums(self.collab_p, *self.mentioned_items(input_ids), T, self.collab_decay)
        ones = torch.ones(B, T, 1, dtype=sums.dtype, device=input_ids.device)
        feats = [ones, sums]
        if self.cue_cols.shape[1]:
            feats.append(cues_mod.context_cues(self.token_cue, input_ids, self.cue_cols.shape[1]).to(sums.dtype))
        return torch.cat(feats, -1)

    def mentioned_items(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(items, first) [B, M]: :func:`~crs_fast.crs.rlhf.mention.mentioned_items` of ``input_ids``."""
        return mention.mentioned_items(self.item_index, input_ids)

    def context_bonus(self, input_ids: torch.Tensor, mentions: bool = True) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(items [B, M], bonus [B, T, M]): each row's candidates (-1 padding) and their bonus after
        each position, ``beta [i in S_t] + people_weight sum_{p named up to t} B_ip`` (differentiable
        in ``beta``; :func:`~crs_fast.crs.rlhf.mention.step_bonus`); ``mentions=False``: without ``beta``."""
        B, T = input_ids.shape
        steps = []
        if mentions and self.item_repeat is not None:
            at, item = mention.first_mentions(self.item_index, input_ids)
            steps.append((at // T, at % T, item, self.item_repeat.float().expand(len(at))))
        for part in (self.people, self.neighbours):
            if part is not None:
                steps.append(part.events(input_ids))
        if not steps:
            return None
        return mention.step_bonus(*(torch.cat(x) for x in zip(*steps, strict=True)), B, T)

    def bonus_at(self, input_ids: torch.Tensor, rows: torch.Tensor, pos: torch.Tensor) -> torch.Tensor | None:
        """[n, I] float32: :meth:`context_bonus` over the catalog after position ``pos[j]`` of row
        ``rows[j]`` (differentiable in the mention bonus), None without a context bonus."""
        found = self.context_bonus(input_ids)
        if found is None:
            return None
        return mention.scatter_bonus(found[0][rows], found[1][rows, pos], len(self.item_ids))

    def mention_bias(self, input_ids: torch.Tensor) -> torch.Tensor | None:
        """[B, V]: the context bonus on the next-token logits after the last position of each row
        (mentioned items, people named anywhere in ``input_ids``), None without one."""
        B, T = input_ids.shape
        rows = torch.arange(B, device=input_ids.device)
        bonus = self.bonus_at(input_ids, rows, torch.full_like(rows, T - 1))
        if bonus is None:
            return None
        out = torch.zeros(B, len(self.item_mask), device=input_ids.device)
        return out.index_copy(1, self.item_ids, bonus.detach().float())

    def with_features(self, h: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
        """Hidden states [B, T, H] as the head scores them: with :meth:`context_features` of
        ``input_ids`` [B, T] appended when the policy has co-occurrence factors."""
        extra = self.context_features(input_ids)
        return h if extra is None else torch.cat([h, extra.to(h.dtype)], -1)

    def trunk(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> Any:
        """The frozen trunk's output and the decoder-layer arguments (mask, rotary embeddings), or
        None when every layer trains. Captured from the model's own forward by a pre-hook on the
        first trained layer, so no model internals are re-implemented."""
        if not self.train_layers:
            return None
        layers = self.backbone().layers
        first = layers[len(layers) - self.train_layers]
        captured: dict[str, Any] = {}

        def hook(module, args, kwargs):
            captured["args"], captured["kwargs"] = args, kwargs
            raise _StopTrunk

        handle = first.register_forward_pre_hook(hook, with_kwargs=True)
        try:
            with torch.no_grad():
                self.backbone()(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        except _StopTrunk:
            pass
        finally:
            handle.remove()
        kwargs = {
            k: v for k, v in captured["kwargs"].items() if k not in ("cache", "past_key_values", "past_key_value")
        }
        kwargs["use_cache"] = False
        h = captured["args"][0] if captured["args"] else kwargs.pop("hidden_states")
        return h, kwargs

    def top(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, state: Any = None) -> torch.Tensor:
        """Final hidden states [B, T, H] from the trunk's ``state`` (computed if None)."""
        if not self.train_layers:
            return self.backbone()(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        h, kwargs = state if state is not None else self.trunk(input_ids, attention_mask)
        layers = self.backbone().layers
        for layer in layers[len(layers) - self.train_layers :]:
            out = layer(h, **kwargs)
            h = out[0] if isinstance(out, tuple) else out
        return self.backbone().norm(h)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, *args: Any, **kwargs: Any) -> tuple:
        """:meth:`logprobs`, its options by name or in the order ``select, state, items_at, item_ban,
        token_ban`` (the module's forward, so DDP wrappers synchronise its gradients)."""
        names = ("select", "state", "items_at", "item_ban", "token_ban")
        if len(args) > len(names):
            raise TypeError(f"Policy.forward takes at most {len(names)} options after the inputs, got {len(args)}")
        return self.logprobs(input_ids, attention_mask, **dict(zip(names, args, strict=False)), **kwargs)

    def logprobs(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        *,
        select: torch.Tensor | None = None,
        state: Any = None,
        temperature: float = 1.0,
        items_at: torch.Tensor | None = None,
        item_ban: torch.Tensor | None = None,
        token_ban: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, ...]:
        """(log p(x_t | x_<t), entropy, value) for t = 1..T-1, each [B, T-1], through
        ``crs_fast.linear_logprobs`` (the LM head fused, no [B, T, V] logits). With ``select``
        (bool [B, T-1]) only those positions go through the LM head; the others are 0.

        ``token_ban`` (:func:`~crs_fast.crs.rlhf.rollout.sampling_bans`): those of the distribution
        the rollout sampled from, its banned tokens removed (:func:`~crs_fast.crs.rlhf.mention.ban_logprobs`).

        With ``items_at`` (bool [B, T-1], n positions) a fourth output: the log-probabilities
        over the catalog at those positions given that the next token is an item, [n, I] in
        catalog order, float32, ``log softmax_i(h . w_i)`` with the items where ``item_ban``
        [n, I] is True excluded (-inf)."""
        h = self.top(input_ids, attention_mask, state)[:, :-1]
        values = self.value_head(h).squeeze(-1)
        h = self.with_features(h, input_ids[:, :-1])
        labels = input_ids[:, 1:]
        if select is None:
            lp, ent = ops.linear_logprobs(h, self.head(), labels, temperature=temperature, entropy=True)
        else:
            sel = select.bool()
            lp_s, ent_s = ops.linear_logprobs(h[sel], self.head(), labels[sel], temperature=temperature, entropy=True)
            lp = torch.zeros(labels.shape, dtype=lp_s.dtype, device=h.device).masked_scatter(sel, lp_s)
            ent = torch.zeros(labels.shape, dtype=ent_s.dtype, device=h.device).masked_scatter(sel, ent_s)
        found = self.context_bonus(input_ids[:, :-1])  # once, for the log-probs and the catalog distribution
        if found is not None:
            lp2, ent2 = mention.policy_logprobs(self, h, labels, lp, ent, temperature, found)
            lp, ent = (lp2, ent2) if select is None else (lp2 * sel, ent2 * sel)
        if token_ban is not None:
            banned = token_ban[1] if select is None else token_ban[1] & select.bool()[..., None]
            lp, ent = mention.ban_logprobs(self, h, labels, lp, ent, temperature, found, (token_ban[0], banned))
        if items_at is None:
            return lp, ent, values
        logits = (h[items_at.bool()].float() @ self.item_rows().float().T) / temperature
        if found is not None:
            rows, pos = items_at.bool().nonzero(as_tuple=True)
            logits = logits + mention.scatter_bonus(found[0][rows], found[1][rows, pos], logits.shape[1]) / temperature
        if item_ban is not None:
            logits = logits.masked_fill(item_ban, float("-inf"))
        return lp, ent, values, torch.log_softmax(logits, dim=-1)

    def next_query(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, state: Any = None) -> torch.Tensor:
        """The final hidden state after each row's last real token (rows right-padded) [B, H (+ 1 +
        r + G)], with the context features when the policy has them: what the LM head scores the next
        token from."""
        h = self.with_features(self.top(input_ids, attention_mask, state), input_ids)
        return h[torch.arange(h.shape[0], device=h.device), attention_mask.sum(1) - 1]

    @torch.no_grad()
    def rank_items(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        k: int,
        exclude: torch.Tensor | None = None,
        state: Any = None,
    ) -> torch.Tensor:
        """Item indices (into the catalog order) ranked by the next-token score after each row's
        last real token (rows right-padded): ``crs_fast.topk_scores`` over the item rows of the
        LM head, ties to the lower index. With a context bonus its candidates are scored apart
        (``q . w_i + bonus_i``) and merged into the others' top k. [B, k]."""
        q = self.next_query(input_ids, attention_mask, state).float()
        items = self.item_rows().float()
        k = min(k, items.shape[0])
        found = self.context_bonus(input_ids)
        if found is None:
            return ops.topk_scores(q, items, k=k, exclude=exclude)[1]
        ment, bonus = found[0], found[1][:, -1].detach().float()
        if exclude is not None:  # items the caller excludes get no bonus either
            ment = ment.masked_fill((ment[:, :, None] == exclude[:, None, :]).any(-1), -1)
        ban = ment if exclude is None else torch.cat([ment, exclude.to(ment.dtype)], 1)
        val, idx = ops.topk_scores(q, items, k=k, exclude=ban)
        score = (q[:, None, :] * items[ment.clamp(min=0)]).sum(-1) + bonus
        return mention.merge_topk(val, idx, score, ment, k)
