"""Words of the dialogue that name a genre, as features of the policy's item logits.

A seeker who asks for "something scary" names a genre without naming a movie; the co-occurrence
features see no item and the policy's text part, fitted on the training turns, does not carry to
new dialogues (docs/results/collab-valid-2026-11-30). The cue score of item ``i`` after position
``t`` is

    cue_weight * sum_g [a word of genre g is among the tokens up to t] * A_ig,

with ``A_ig = 1 / |genres(i) in GENRE_WORDS|`` for the item's genres (0 otherwise): each genre named
counts once however often, and an item with many genres gains as much in total as one with a
single genre. Like the co-occurrence score it is one more block of hidden dimensions (the 0/1 cue
vector, cumulative over positions) and LM-head columns (``cue_weight * A``), so the fused head
scores it exactly. A word counts when one of its forms is a single token of the tokenizer (with
or without a leading space, lower case or capitalised); :func:`cue_tokens` says which did.
"""

from __future__ import annotations

from typing import Any

import torch

from ..data.schema import Catalog

GENRE_WORDS: dict[str, tuple[str, ...]] = {  # catalog genre -> words that name it
    "action": ("action",),
    "adventure": ("adventure", "adventures"),
    "animation": ("animated", "animation", "cartoon", "cartoons", "pixar", "disney", "anime"),
    "biography": ("biography", "biopic", "biopics", "biographical"),
    "comedy": ("comedy", "comedies", "funny", "hilarious", "laugh", "laughs", "humor", "humour"),
    "crime": ("crime", "gangster", "gangsters", "mob", "mafia", "heist", "heists"),
    "documentary": ("documentary", "documentaries"),
    "drama": ("drama", "dramas", "dramatic"),
    "family": ("family", "kids", "children"),
    "fantasy": ("fantasy", "magic", "wizards"),
    "horror": ("horror", "horrors", "scary", "scare", "scared", "creepy", "slasher", "zombie", "zombies"),
    "musical": ("musical", "musicals"),
    "mystery": ("mystery", "mysteries", "whodunit"),
    "romance": ("romance", "romantic", "romcom", "romcoms"),
    "sci-fi": ("sci-fi", "scifi", "space", "aliens", "alien", "futuristic"),
    "sport": ("sport", "sports"),
    "thriller": ("thriller", "thrillers", "suspense", "suspenseful"),
    "war": ("war",),
    "western": ("western", "westerns", "cowboy", "cowboys"),
}


def cue_tokens(tok: Any, vocab_size: int, words: dict[str, tuple[str, ...]] = GENRE_WORDS) -> torch.Tensor:
    """[V] int64: the index (in ``sorted(words)``) of the genre each token names, -1 for none. A
    word's forms ``w``, `` w``, ``W``, `` W`` count when the tokenizer makes one token of them (not
    its unknown token); a token two genres share keeps the first genre in sorted order."""
    out = torch.full((vocab_size,), -1, dtype=torch.int64)
    unk = getattr(tok, "unk_token_id", None)
    for g, genre in reversed(list(enumerate(sorted(words)))):
        for w in words[genre]:
            for form in (w, " " + w, w.capitalize(), " " + w.capitalize()):
                ids = tok(form, add_special_tokens=False)["input_ids"]
                if len(ids) == 1 and ids[0] != unk and 0 <= ids[0] < vocab_size:
                    out[ids[0]] = g
    return out


def item_cues(catalog: Catalog, words: dict[str, tuple[str, ...]] = GENRE_WORDS) -> torch.Tensor:
    """[I, G] float32 in ``catalog.ids()`` order, genres in ``sorted(words)`` order: ``A_ig = 1 / n_i``
    for each of the item's ``n_i`` genres that ``words`` names, else 0."""
    genres = {g: n for n, g in enumerate(sorted(words))}
    out = torch.zeros(len(catalog.ids()), len(genres))
    for k, i in enumerate(catalog.ids()):
        named = [genres[g] for g in dict.fromkeys(catalog[i].attributes.get("genre", [])) if g in genres]
        if named:
            out[k, named] = 1.0 / len(named)
    return out


def context_cues(token_cue: torch.Tensor, input_ids: torch.Tensor, n_cues: int) -> torch.Tensor:
    """[B, T, G] float32: 1 where a token of genre ``g`` (``token_cue`` [V], -1 for none) is among
    ``input_ids[b, :t+1]``, else 0."""
    B, T = input_ids.shape
    cue = token_cue[input_ids]
    hot = torch.zeros(B, T, n_cues + 1, device=input_ids.device)
    hot.scatter_(2, torch.where(cue >= 0, cue, n_cues)[..., None], 1.0)
    return hot[..., :n_cues].cummax(1).values
