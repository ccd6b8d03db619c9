"""The data a run trains on (:func:`prepare_data`: ReDial when the data directory holds it, plus
synthetic dialogues over the same catalog) and its text: prompts, system-turn responses with
their item tokens, SFT pairs, token encoding and padding."""

from __future__ import annotations

import pathlib
import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..data.redial import load_redial, load_redial_catalog, most_mentioned
from ..data.schema import Catalog, Dialogue, Turn, data_dir
from ..data.simulator import USER_PHRASES
from ..data.synthetic import SYSTEM_PHRASES, generate_catalog, write_synthetic_redial
from .config import Config
from .lm import item_token, with_item_tokens


@dataclass
class CRSData:
    """The catalog, the logged dialogues for SFT and R_phi, and the ReDial test set (if real)."""

    catalog: Catalog
    train: list[Dialogue]
    valid: list[Dialogue]
    redial_test: list[Dialogue] | None
    real: bool
    pool: list[str] | None = None  # the items synthetic users know (None: the whole catalog)


def redial_paths() -> dict[str, pathlib.Path]:
    root = data_dir() / "redial"
    return {
        n: root / f
        for n, f in (
            ("movies", "movies_with_mentions.csv"),
            ("info", "movie_info.json"),
            ("train", "train_data.jsonl"),
            ("test", "test_data.jsonl"),
        )
    }


def prepare_data(cfg: Config, workdir: pathlib.Path) -> CRSData:
    """Catalog (ReDial's when the data directory has it and ``real_data`` allows, else generated),
    synthetic logged dialogues over it, plus ReDial train/test when real."""
    paths = redial_paths()
    have = all(p.exists() for p in paths.values())
    if cfg.real_data == "on" and not have:
        raise FileNotFoundError(f"real_data='on' but the ReDial files are missing under {data_dir() / 'redial'}")
    real = have and cfg.real_data != "off"
    pool = None
    if real:
        catalog = load_redial_catalog(paths["movies"], paths["info"])
        if cfg.user_pool > 0:
            pool = [i for i in most_mentioned(paths["movies"], cfg.user_pool) if i in catalog]
    else:
        catalog = generate_catalog(cfg.catalog_items, seed=cfg.seed)
    workdir.mkdir(parents=True, exist_ok=True)
    synth_file = write_synthetic_redial(
        catalog, cfg.synthetic_users, workdir / "synthetic_dialogues.jsonl", seed=cfg.seed, pool=pool
    )
    synth = list(load_redial(synth_file))
    rng = random.Random(cfg.seed)
    rng.shuffle(synth)
    n_val = max(1, len(synth) // 10)
    train, valid = synth[n_val:], synth[:n_val]
    test = None
    if real:
        train += list(load_redial(paths["train"], on_error="skip"))[: cfg.redial_train_max]
        test = list(load_redial(paths["test"], on_error="skip"))[: cfg.redial_eval_max]
    return CRSData(catalog, train, valid, test, real, pool)


def turn_text(turn: Turn, catalog: Catalog) -> str:
    """A turn's text on one line, ``@ID`` mentions as item tokens."""
    return with_item_tokens(" ".join(turn.text.split()), catalog)


def prompt(turns: Sequence[Turn], catalog: Catalog) -> str:
    """The dialogue so far and the cue for the next system turn."""
    lines = [f"{'User' if t.role == 'user' else 'System'}: {turn_text(t, catalog)}" for t in turns]
    return "\n".join([*lines, "System:"])


def corpus(data: CRSData) -> list[str]:
    """Texts the tiny model's word-level tokenizer is built from (with the simulator's phrases)."""
    texts = [prompt(d.turns, data.catalog) for d in data.train + data.valid]
    texts += [it.title for it in data.catalog.items.values()]
    texts += USER_PHRASES + SYSTEM_PHRASES
    for it in data.catalog.items.values():
        texts += [" ".join(v) for k, v in it.attributes.items() if k in ("genre", "star", "director")]
    return texts


def response_text(turn: Turn, catalog: Catalog) -> str:
    """A system turn as the policy writes it: its first recommended item's token first (so the
    next-token distribution after "System:" is the policy's ranking of the catalog, and PPO
    shapes that choice directly), then the turn's text with mentions as item tokens."""
    text = turn_text(turn, catalog)
    first = next((i for i in turn.items if i in catalog), None)
    return f" {item_token(first)} {text}" if first else f" {text}"


def sft_pairs(dialogues: Sequence[Dialogue], catalog: Catalog) -> list[tuple[str, str]]:
    """(prompt, system turn) for every system turn with some context."""
    out = []
    for d in dialogues:
        for i, t in enumerate(d.turns):
            if t.role == "system" and i > 0:
                out.append((prompt(d.turns[:i], catalog), response_text(t, catalog)))
    return out


def encode_pair(tok, context: str, response: str, cfg: Config) -> tuple[list[int], list[int]]:
    """Token ids of the context (its last ``max_context``) and of the response (+ EOS)."""
    c = tok(context, add_special_tokens=False)["input_ids"][-cfg.max_context :]
    r = tok(response, add_special_tokens=False)["input_ids"][: cfg.max_response] + [tok.eos_token_id]
    return c, r


def pad_right(
    seqs: Sequence[Sequence[int]], pad: int, device: torch.device | str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, attention mask) [B, L] right-padded, on ``device`` (default CPU)."""
    L = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), L), pad, dtype=torch.int64)
    mask = torch.zeros(len(seqs), L, dtype=torch.int64)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s, dtype=torch.int64)
        mask[i, : len(s)] = 1
    return ids.to(device), mask.to(device)
