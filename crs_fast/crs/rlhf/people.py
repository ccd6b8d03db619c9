"""People named in the dialogue (directors, stars) as a bonus on their items' logits.

A seeker who says "anything with Tom Hanks" names no movie; the co-occurrence features see no
item and the genre cues no genre. The people bonus of item ``i`` after position ``t`` is

    weight * sum_p [person p named among the tokens up to t] * B_ip,

``B_ip = 1 / n`` for each of the item's ``n`` directors (the same for its stars) whose name has two
or more words (single words such as "Madonna" collide with everyday text). A person counts once,
however often named. A name is named where its token sequence ends, in one of four surface forms
(as the catalog spells it and in lower case, each with and without a leading space), so the bonus
is causal. It is sparse and row-specific: like the mention bonus it is added exactly on top of the
fused head (:mod:`~crs_fast.crs.rlhf.mention`), never through head columns.

The matcher hashes every window of ``L`` tokens with two polynomial hashes (mod ``2^31 - 1`` and
``2^31 - 19``, int64 arithmetic that never overflows), looks the pair up among the names' sorted
keys and confirms the tokens, for each name length ``L``: vectorised, no Python loop over tokens.
"""

from __future__ import annotations

import re
from typing import Any

import torch

from ..data.schema import Catalog

KINDS = ("director", "star")
_MODS = (2**31 - 1, 2**31 - 19)
_BASES = (1_000_003, 999_983)


def person_key(name: str) -> str:
    """The lower-case words of a name, space-joined: how two spellings of one person are merged."""
    return " ".join(re.findall(r"[a-z0-9]+", name.lower()))


def item_people(catalog: Catalog, kinds: tuple[str, ...] = KINDS, min_words: int = 2) -> tuple[list[str], torch.Tensor]:
    """(names, B): the catalog's people of ``min_words`` or more words (first spelling of each
    :func:`person_key`) and ``B`` [I, P] float32 in ``catalog.ids()`` order, ``B_ip = 1 / n`` for
    each of the item's ``n`` people of one kind (counted before the short names are dropped)."""
    keys: dict[str, int] = {}
    names: list[str] = []
    rows, cols, vals = [], [], []
    for k, i in enumerate(catalog.ids()):
        for kind in kinds:
            people = list(dict.fromkeys(catalog[i].attributes.get(kind, [])))
            for name in people:
                key = person_key(name)
                if len(key.split()) < min_words:
                    continue
                if key not in keys:
                    keys[key] = len(names)
                    names.append(name.strip())
                rows.append(k)
                cols.append(keys[key])
                vals.append(1.0 / len(people))
    b = torch.zeros(len(catalog.ids()), len(names))
    if rows:
        b.index_put_((torch.tensor(rows), torch.tensor(cols)), torch.tensor(vals), accumulate=True)
    return names, b


def _hash(seqs: torch.Tensor, lengths: torch.Tensor | int) -> torch.Tensor:
    """int64 key of each row's first ``lengths`` tokens of ``seqs`` [..., L] (two hashes, length mixed in)."""
    key = []
    L = seqs.shape[-1]
    valid = torch.arange(L, device=seqs.device) < torch.as_tensor(lengths, device=seqs.device)[..., None]
    for mod, base in zip(_MODS, _BASES, strict=True):
        h = torch.as_tensor(lengths, device=seqs.device, dtype=torch.int64).expand(seqs.shape[:-1]).clone()
        for j in range(L):
            h = torch.where(valid[..., j], (h * base + seqs[..., j] + 1) % mod, h)
        key.append(h)
    return key[0] * _MODS[1] + key[1]


def name_table(tok: Any, names: list[str]) -> dict[str, torch.Tensor]:
    """The matcher's tables for ``names`` under tokenizer ``tok``: ``key`` [N] sorted, ``seq`` [N,
    L] (-1 padding), ``length`` [N], ``person`` [N] (index into ``names``); one entry per distinct
    token sequence of the forms ``name``, `` name``, ``lower``, `` lower`` (the first person keeps
    a sequence two share; sequences of one token or with the unknown token are dropped)."""
    forms = [(p, f) for p, n in enumerate(names) for f in dict.fromkeys((n, " " + n, n.lower(), " " + n.lower()))]
    ids = tok([f for _, f in forms], add_special_tokens=False)["input_ids"] if forms else []
    unk = getattr(tok, "unk_token_id", None)
    seen: dict[tuple[int, ...], int] = {}
    for (p, _), s in zip(forms, ids, strict=True):
        if len(s) >= 2 and unk not in s:
            seen.setdefault(tuple(s), p)
    width = max((len(s) for s in seen), default=1)
    seq = torch.full((len(seen), width), -1, dtype=torch.int64)
    for r, s in enumerate(seen):
        seq[r, : len(s)] = torch.tensor(s)
    length = torch.tensor([len(s) for s in seen], dtype=torch.int64)
    person = torch.tensor(list(seen.values()), dtype=torch.int64)
    key = _hash(seq, length)
    order = key.argsort()
    return {"key": key[order], "seq": seq[order], "length": length[order], "person": person[order]}


def named_people(
    table: dict[str, torch.Tensor], input_ids: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(row, position, person), each [n]: every person of ``table`` (:func:`name_table`) named in
    ``input_ids`` [B, T], once, at the position where its first naming ends."""
    B, T = input_ids.shape
    dev = input_ids.device
    found = []
    for L in table["length"].unique().tolist():
        if L > T:
            continue
        win = input_ids.unfold(1, L, 1)  # [B, T - L + 1, L]
        key = _hash(win, L)
        at = torch.searchsorted(table["key"], key).clamp(max=len(table["key"]) - 1)
        hit = (table["key"][at] == key) & (table["length"][at] == L)
        hit &= (table["seq"][at][..., :L] == win).all(-1)
        b, s = hit.nonzero(as_tuple=True)
        found.append(torch.stack([b, s + L - 1, table["person"][at[b, s]]]))
    if not found:
        empty = torch.zeros(0, dtype=torch.int64, device=dev)
        return empty, empty, empty
    b, t, p = torch.cat(found, 1)
    n_people = int(table["person"].max()) + 1
    key = (b * n_people + p) * (T + 1) + t
    key = key.sort().values  # per (row, person), positions ascending
    pair = key // (T + 1)
    first = torch.ones_like(pair, dtype=torch.bool)
    first[1:] = pair[1:] != pair[:-1]
    pair, t = pair[first], key[first] % (T + 1)
    return pair // n_people, t, pair % n_people


def people_events(
    table: dict[str, torch.Tensor], b_csr: tuple[torch.Tensor, torch.Tensor, torch.Tensor], input_ids: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(row, position, item, weight), each [n]: the bonus steps of :func:`named_people`, one per
    (person, item of theirs), ``b_csr = (ptr [P + 1], items, weights)`` the rows of ``B^T``."""
    b, t, p = named_people(table, input_ids)
    ptr, items, weights = b_csr
    counts = ptr[p + 1] - ptr[p]
    rep = torch.repeat_interleave(torch.arange(len(p), device=p.device), counts)
    off = torch.arange(len(rep), device=p.device) - (counts.cumsum(0) - counts)[rep] + ptr[p][rep]
    return b[rep], t[rep], items[off], weights[off]


def csr(b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``B`` [I, P] as the rows of its transpose: (ptr [P + 1], item indices, weights)."""
    nz = b.T.nonzero(as_tuple=True)
    counts = torch.bincount(nz[0], minlength=b.shape[1])
    ptr = torch.cat([torch.zeros(1, dtype=torch.int64), counts.cumsum(0)])
    return ptr, nz[1], b.T[nz].float()


class PeopleBonus(torch.nn.Module):
    """The people part of a policy's context bonus: ``weight * B`` and the name table as
    (non-persistent) buffers, so they follow the policy's device and stay out of checkpoints."""

    def __init__(self, table: dict[str, torch.Tensor], b: torch.Tensor, weight: float, n_items: int) -> None:
        super().__init__()
        if b.ndim != 2 or b.shape[0] != n_items or not torch.isfinite(b).all():
            raise ValueError(f"people: B must be a finite [{n_items}, P] matrix, got {tuple(b.shape)}")
        if not torch.isfinite(torch.tensor(float(weight))):
            raise ValueError(f"people_weight must be finite, got {weight}")
        parts = dict(zip(("ptr", "items", "w"), csr(float(weight) * b.float()), strict=True))
        for k, v in {**table, **parts}.items():
            self.register_buffer(k, v.clone(), persistent=False)

    def events(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """:func:`people_events` of ``input_ids`` [B, T] (weights times ``weight``)."""
        table = {k: getattr(self, k) for k in ("key", "seq", "length", "person")}
        return people_events(table, (self.ptr, self.items, self.w), input_ids)
