"""The data a run trains on (:func:`prepare_data`: ReDial when the data directory holds it, plus
synthetic dialogues over the same catalog) and its text: prompts, system-turn responses with
their item tokens, SFT pairs, token encoding and padding."""

from __future__ import annotations

import pathlib
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..data.opendialkg import load_opendialkg, load_opendialkg_catalog
from ..data.redial import load_redial, load_redial_catalog, most_mentioned
from ..data.schema import Catalog, DataError, Dialogue, Item, Turn, data_dir
from ..data.simulator import USER_PHRASES
from ..data.synthetic import SYSTEM_PHRASES, generate_catalog, write_synthetic_redial
from .config import Config
from .lm import ITEM_RE, item_token, items_in, with_item_tokens


@dataclass
class CRSData:
    """The catalog, the logged dialogues for SFT and R_phi (synthetic ones have ids "synth..."),
    and the real dataset's validation and test sets (if real)."""

    catalog: Catalog
    train: list[Dialogue]
    valid: list[Dialogue]
    real_test: list[Dialogue] | None
    real: bool
    pool: list[str] | None = None  # the items synthetic users know (None: the whole catalog)
    real_valid: list[Dialogue] | None = None  # the real dataset's validation dialogues: what choices are made on
    dataset: str = "redial"  # which real dataset: "redial" or "opendialkg"


def real_training(data: CRSData) -> list[Dialogue]:
    """The real dataset's training dialogues among ``data.train`` (the synthetic ones have ids "synth...")."""
    return [d for d in data.train if not d.id.startswith("synth")]


def choice_folds(data: CRSData, folds: int = 5, seed: int = 0) -> list[tuple[str, list[Dialogue], list[Dialogue]]]:
    """Where settings are chosen, as (name, training dialogues, held-out dialogues): ``("valid",
    data.train, data.real_valid)``, then ``folds`` cross-validation folds ``("cv<f>", data.train
    without fold f, fold f)`` of the real training dialogues, dealt round-robin after a shuffle
    seeded by ``seed`` (synthetic dialogues always train). No test dialogue is used."""
    if folds < 2:
        raise ValueError(f"folds must be >= 2, got {folds}")
    real = real_training(data)
    random.Random(seed).shuffle(real)
    out = [("valid", list(data.train), list(data.real_valid or []))]
    for f in range(folds):
        held = {d.id for d in real[f::folds]}
        out.append((f"cv{f}", [d for d in data.train if d.id not in held], real[f::folds]))
    return out


def redial_paths() -> dict[str, pathlib.Path]:
    root = data_dir() / "redial"
    return {
        n: root / f
        for n, f in (
            ("movies", "movies_with_mentions.csv"),
            ("info", "movie_info.json"),
            ("train", "train_data.jsonl"),
            ("valid", "valid_data.jsonl"),
            ("test", "test_data.jsonl"),
        )
    }


def prepare_data(cfg: Config, workdir: pathlib.Path) -> CRSData:
    """Catalog (the real dataset's when the data directory has it and ``real_data`` allows, else
    generated), synthetic logged dialogues over it, plus the real dataset's train, valid and test
    dialogues when real: ReDial's ``train_data`` + ``train_extra`` / ``valid_data`` / ``test_data``,
    or OpenDialKG's processed ``train`` / ``valid`` / ``test`` turns (``cfg.dataset``;
    ``redial_train_max`` / ``redial_eval_max`` cap them, 0: all)."""
    real_files = _redial_files(cfg) if cfg.dataset == "redial" else _opendialkg_files(cfg)
    real = real_files is not None
    if real:
        catalog, pool, real_train, real_valid, real_test = real_files
    else:
        catalog, pool = generate_catalog(cfg.catalog_items, seed=cfg.seed), None
        real_train, real_valid, real_test = [], None, None
    workdir.mkdir(parents=True, exist_ok=True)
    synth_file = write_synthetic_redial(
        catalog, cfg.synthetic_users, workdir / "synthetic_dialogues.jsonl", seed=cfg.seed, pool=pool
    )
    synth = list(load_redial(synth_file))
    rng = random.Random(cfg.seed)
    rng.shuffle(synth)
    n_val = max(1, len(synth) // 10)
    train, valid = synth[n_val:] + real_train, synth[:n_val]
    return CRSData(catalog, train, valid, real_test, real, pool, real_valid, cfg.dataset)


def _use_real(cfg: Config, have: bool, where: pathlib.Path) -> bool:
    if cfg.real_data == "on" and not have:
        raise FileNotFoundError(f"real_data='on' but the {cfg.dataset} files are missing under {where}")
    return have and cfg.real_data != "off"


def _redial_files(cfg: Config) -> tuple | None:
    """(catalog, user pool, train, valid, test) of ReDial, or None when not used."""
    paths = redial_paths()
    if not _use_real(cfg, all(p.exists() for n, p in paths.items() if n != "valid"), data_dir() / "redial"):
        return None
    catalog = load_redial_catalog(paths["movies"], paths["info"])
    pool = [i for i in most_mentioned(paths["movies"], cfg.user_pool) if i in catalog] if cfg.user_pool > 0 else None
    train = _first(_redial_train(paths["train"]), cfg.redial_train_max)
    valid = (
        _first(load_redial(paths["valid"], on_error="skip"), cfg.redial_eval_max) if paths["valid"].exists() else None
    )
    test = _first(load_redial(paths["test"], on_error="skip"), cfg.redial_eval_max)
    return catalog, pool, train, valid, test


def _opendialkg_files(cfg: Config) -> tuple | None:
    """(catalog, user pool, train, valid, test) of OpenDialKG's processed recommendation turns (one
    dialogue per turn record, titles linked to ``item_info.json``), or None when not used. Its
    actors are the catalog's stars (the attribute the simulator and R_phi read) and a book's
    writers its directors."""
    root = data_dir() / "opendialkg"
    files = {n: root / f"{n}.jsonl" for n in ("train", "valid", "test")}
    if not _use_real(cfg, (root / "item_info.json").exists() and all(p.exists() for p in files.values()), root):
        return None
    raw = load_opendialkg_catalog(root / "item_info.json")
    items = []
    for it in raw.items.values():
        a = dict(it.attributes)
        a.setdefault("star", a.get("actor", []))
        if not a.get("director"):
            a["director"] = a.get("writer", [])
        items.append(Item(it.id, it.title, a))
    catalog = Catalog(items, source=raw.source)
    train = _first(load_opendialkg(files["train"], catalog, on_error="skip"), cfg.redial_train_max)
    valid = _first(load_opendialkg(files["valid"], catalog, on_error="skip"), cfg.redial_eval_max)
    test = _first(load_opendialkg(files["test"], catalog, on_error="skip"), cfg.redial_eval_max)
    counts = Counter(i for d in train for t in d.turns for i in t.items)
    pool = sorted(counts, key=lambda i: (-counts[i], i))[: cfg.user_pool] if cfg.user_pool > 0 else None
    return catalog, pool or None, train, valid, test


def test_dialogues(dataset: str, path: pathlib.Path, catalog: Catalog | None = None) -> list[Dialogue]:
    """The dialogues of a test file in ``dataset``'s original format (ReDial ``.jsonl``; OpenDialKG
    processed ``.jsonl`` turns, ``.json`` sessions or ``.csv``), OpenDialKG's titles linked to
    ``catalog`` when given. A malformed or empty file raises :class:`DataError` naming it."""
    out = list(load_redial(path) if dataset == "redial" else load_opendialkg(path, catalog))
    if not out:
        raise DataError(f"{path}: no dialogues to evaluate on")
    return out


def _first(dialogues: list[Dialogue], n: int) -> list[Dialogue]:
    """The first ``n`` dialogues (all of them for ``n = 0``)."""
    return list(dialogues)[:n] if n else list(dialogues)


def _redial_train(train_file: pathlib.Path) -> list[Dialogue]:
    """ReDial's training dialogues: ``train_data.jsonl``, then ``train_extra.jsonl`` (the same
    release without message times, redistributed by iEvaLM-CRS) where it exists, minus ids
    already read."""
    out = list(load_redial(train_file, on_error="skip"))
    extra = train_file.with_name("train_extra.jsonl")
    if extra.exists():
        seen = {d.id for d in out}
        out += [d for d in load_redial(extra, on_error="skip") if d.id not in seen]
    return out


def turn_text(turn: Turn, catalog: Catalog, lead: str | None = None) -> str:
    """A turn's text on one line, ``@ID`` mentions as item tokens, then the tokens of the turn's
    catalog items its text does not mark (OpenDialKG names items by title: the items linked to a
    turn are what the policy's co-occurrence features and mention bonus read), except ``lead``
    (the item a response already opens with)."""
    text = with_item_tokens(" ".join(turn.text.split()), catalog)
    shown = set(items_in(text))
    extra = [item_token(i) for i in dict.fromkeys(turn.items) if i in catalog and i not in shown and i != lead]
    return " ".join([text, *extra]) if extra else text


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
    first = next((i for i in turn.items if i in catalog), None)
    text = turn_text(turn, catalog, lead=first)
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
    """Token ids of the context (:func:`clip_context` to ``max_context``) and of the response (+ EOS)."""
    c = clip_context(tok, tok(context, add_special_tokens=False)["input_ids"], cfg.max_context)
    r = tok(response, add_special_tokens=False)["input_ids"][: cfg.max_response] + [tok.eos_token_id]
    return c, r


def clip_context(tok, ids: Sequence[int], n: int) -> list[int]:
    """The last ``n`` token ids, preceded by the item tokens that occur only before them (distinct,
    in order of first mention): the text stays within ``n`` tokens while the policy's
    co-occurrence features still see every item of the dialogue, as the baselines do."""
    ids = list(ids)
    if len(ids) <= n:
        return ids
    head, tail = ids[:-n], ids[len(ids) - n :]
    kept = set(tail)
    out = []
    for i, t in zip(head, tok.convert_ids_to_tokens(head), strict=True):
        if i not in kept and ITEM_RE.fullmatch(str(t)):
            out.append(i)
            kept.add(i)
    return out + tail


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
