"""The policy assembled from a Config: the LM with item tokens, its co-occurrence factors, item
prior, mention bonus, genre cues and people bonus (:func:`build_policy`); its optimiser groups and its frozen
reference copy."""

from __future__ import annotations

import copy
from typing import Any

import torch

from .collab import cooccurrence_counts, cooccurrence_factors
from .config import Config
from .corpus import CRSData, corpus, real_training
from .cues import cue_tokens, item_cues
from .lm import add_item_tokens, item_attribute_index, load_lm
from .neighbours import build_neighbours
from .people import item_people, name_table
from .policy import ITEM_PARTS, Policy

ROW_PARTS = ("item_out", "item_attr.")  # the learned item rows: output rows and attribute embeddings
# the LM under its head (embeddings, layers, final norm; plain or wrapped in LoRA): the item query
TRUNK_PARTS = ("lm.model.", "lm.base_model.model.model.")
# Config.ppo_freeze -> the parts PPO leaves as SFT left them; "query": the item scores at every
# context stay SFT's exactly (PPO trains the LM head's text rows and the value head)
FROZEN = {"none": (), "rows": ROW_PARTS, "items": ITEM_PARTS, "query": ITEM_PARTS + TRUNK_PARTS}


def build_policy(cfg: Config, data: CRSData) -> tuple[Policy, Any]:
    """The base policy (item tokens added, value head) and its tokenizer."""
    lm, tok = load_lm(cfg.model, corpus(data) if cfg.model == "tiny" else (), seed=cfg.seed)
    item_ids = add_item_tokens(lm, tok, data.catalog)
    if cfg.lora_r > 0:
        from peft import LoraConfig, get_peft_model

        lm = get_peft_model(
            lm, LoraConfig(r=cfg.lora_r, lora_alpha=2 * cfg.lora_r, target_modules=["q_proj", "v_proj"])
        )
    torch.manual_seed(cfg.seed)
    attrs = item_attribute_index(data.catalog) if cfg.item_features else None
    collab = prior = None
    if cfg.collab_rank:  # counted once: the factors' pairs and the prior's mentions
        n, mentions = cooccurrence_counts(data.train, data.catalog)
        collab = cooccurrence_factors(data.train, data.catalog, cfg.collab_rank, cfg.seed, counts=n)
        if cfg.collab_norm:  # a frequent context item says less about what comes next
            collab = (collab[0] * torch.pow(1 + mentions, -cfg.collab_norm)[:, None], collab[1])
        prior = cfg.item_prior * torch.log1p(mentions)
    vocab = lm.get_output_embeddings().weight.shape[0]
    cues = (cue_tokens(tok, vocab), item_cues(data.catalog)) if cfg.collab_rank and cfg.genre_cues else None
    people = None
    if cfg.people_cues:
        names, b = item_people(data.catalog)
        people = (name_table(tok, names), b)
    policy = Policy(
        lm,
        item_ids,
        train_layers=0 if cfg.lora_r > 0 else cfg.train_layers,
        item_attrs=attrs,
        collab=collab,
        collab_weight=cfg.collab_weight,
        mention_bonus=cfg.mention_bonus if cfg.mention_bonus else None,
        item_prior=prior,
        collab_decay=cfg.collab_decay,
        cues=cues,
        cue_weight=cfg.genre_cues,
        people=people,
        people_weight=cfg.people_cues,
    )
    if cfg.knn_weight:  # the real training dialogues' recommender turns vote (synthetic ones are templates)
        policy.neighbours = build_neighbours(tok, data.catalog, real_training(data), _encoder().encode, cfg)
    return policy, tok


def _encoder():
    """The sentence encoder the neighbour bonus embeds contexts with (one per process: MiniLM, frozen)."""
    global _ENCODER
    if _ENCODER is None:
        from .encoder import SentenceEncoder

        _ENCODER = SentenceEncoder()
    return _ENCODER


_ENCODER = None


def param_groups(policy: Policy, lr: float, item_lr: float, frozen: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """AdamW groups: the item attribute embeddings, the item bias, the item output rows (new,
    starting at zero) and the mention bonus at ``item_lr``, every other trainable parameter at ``lr``.
    Parameters whose names start with one of ``frozen`` stop training (``requires_grad`` off, in no
    group): e.g. :data:`ROW_PARTS` keeps the learned item rows where they are."""
    for n, p in policy.named_parameters():
        if frozen and n.startswith(frozen):
            p.requires_grad_(False)
    item = [p for n, p in policy.named_parameters() if p.requires_grad and n.startswith(ITEM_PARTS)]
    rest = [p for n, p in policy.named_parameters() if p.requires_grad and not n.startswith(ITEM_PARTS)]
    return [g for g in ({"params": rest, "lr": lr}, {"params": item, "lr": item_lr}) if g["params"]]


def frozen_copy(policy: Policy) -> Policy:
    """The reference policy: a frozen copy."""
    ref = copy.deepcopy(policy)
    for p in ref.parameters():
        p.requires_grad_(False)
    return ref.eval()
