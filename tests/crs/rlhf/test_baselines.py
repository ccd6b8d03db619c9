"""The baselines the policies are compared with, by hand on small catalogs, and the comparison's
paired intervals."""

import math
import random

import pytest
import torch

from crs_fast.crs.data.schema import Catalog, Dialogue, Item, Turn
from crs_fast.crs.rlhf import baselines as B
from crs_fast.crs.rlhf import compare as CMP
from crs_fast.crs.rlhf import config as CF
from crs_fast.crs.rlhf import evaluate as E


def catalog(n: int = 6) -> Catalog:
    genres = ["comedy", "drama"]
    return Catalog([Item(f"m{i}", f"Movie {i}", {"genre": [genres[i % 2]]}) for i in range(n)])


def dialogue(did: str, *items: str) -> Dialogue:
    return Dialogue(did, [Turn("user", "hi", list(items[:1])), Turn("system", "try", list(items[1:]))])


TRAIN = [dialogue("a", "m1", "m2"), dialogue("b", "m1", "m2", "m3"), dialogue("c", "m4", "m2"), dialogue("d", "m5")]


def test_popularity_counts_dialogues_that_mention_an_item():
    b = B.Baselines(catalog(), TRAIN)
    ids = list(catalog().ids())
    # m2 in 3 dialogues, m1 in 2, then m3, m4, m5 once (catalog order), m0 never
    assert [ids[i] for i in b.rank("popularity", [], "", 6)] == ["m2", "m1", "m3", "m4", "m5", "m0"]


def test_repeat_ranks_the_context_items_most_recent_first_and_nothing_else():
    b = B.Baselines(catalog(), TRAIN)
    ids = list(catalog().ids())
    assert [ids[i] for i in b.rank("repeat", ["m3", "m0", "m3", "m5"], "", 50)] == ["m5", "m3", "m0"]
    assert b.rank("repeat", [], "", 50) == []


def test_cooccurrence_sums_log_counts_and_breaks_ties_by_popularity():
    b = B.Baselines(catalog(), TRAIN)
    ids = list(catalog().ids())
    top = [ids[i] for i in b.rank("cooccurrence", ["m1"], "", 6)]
    # with m1: m2 twice (log 3), m3 once (log 2); the rest by popularity, m1 itself too
    assert top[:2] == ["m2", "m3"]
    assert top[2:] == ["m1", "m4", "m5", "m0"]
    both = b.rank("cooccurrence", ["m1", "m4"], "", 2)  # m2: log 3 + log 2 beats m3: log 2
    assert [ids[i] for i in both] == ["m2", "m3"]
    assert math.log1p(2) + math.log1p(1) > math.log1p(1)


class FakeEncoder:
    """Embeds a text by whether it says comedy or drama."""

    def encode(self, texts):
        return torch.nn.functional.normalize(
            torch.tensor([[float("comedy" in t) + 1e-3, float("drama" in t) + 1e-3] for t in texts]), dim=-1
        )


def test_content_ranks_items_whose_text_matches_the_context():
    b = B.Baselines(catalog(), TRAIN, FakeEncoder())
    ids = list(catalog().ids())
    top = [ids[i] for i in b.rank("content", [], "I want a drama", 3)]
    assert top == ["m1", "m3", "m5"]  # the dramas, ties to the lower index
    with pytest.raises(ValueError, match="sentence encoder"):
        B.Baselines(catalog(), TRAIN).rank("content", [], "x", 3)
    with pytest.raises(ValueError, match="unknown baseline"):
        b.rank("oracle", [], "", 3)


def test_baselines_on_samples_and_ppo_minus_the_best():
    cat = catalog()
    samples = [
        E.Sample("ctx-a", "m2", ["m1"], "d1"),
        E.Sample("ctx-a", "m3", ["m1"], "d1"),
        E.Sample("ctx-b", "m1", ["m1"], "d2"),  # a repeat: only the standard protocol can count it
    ]
    cfg = CF.Config.quick(bootstrap=200)
    sets = {"redial": (samples, samples[:2])}
    res, ranks = CMP.evaluate_baselines(cat, sets, {"redial": TRAIN}, cfg)
    assert set(res) == set(B.NAMES) and "redial" not in res["content"]  # no encoder: content skipped
    assert res["repeat"]["redial"]["standard"]["recall@1"] == pytest.approx(1 / 3)
    assert res["repeat"]["redial"]["dedup"]["recall@50"] == 0.0
    assert res["cooccurrence"]["redial"]["dedup"]["recall@10"] == 1.0
    mine = {"redial": ([0, None, None], [None, None])}
    diff = CMP.ppo_vs(mine, {k: v for k, v in ranks.items() if v}, sets, cfg)
    best = diff["redial"]["dedup"]["best"]["recall@10"]
    # six items: every ranking baseline holds both dedup targets in its top 10; PPO none
    assert best["baseline"] in ("popularity", "cooccurrence") and best["diff"] == pytest.approx(-1.0)
    assert best["lo"] == best["hi"] == pytest.approx(-1.0)
    assert diff["redial"]["standard"]["popularity"]["recall@1"]["groups"] == 2


def test_repeat_is_zero_under_dedup_when_two_contexts_share_words():
    """Two users open with the same words about different liked items: each gets its own repeat
    list, so no sample can hit a target the dedup protocol removed for it."""
    cat = catalog()
    samples = [E.Sample("I liked a film", "m2", ["m1"], "u1"), E.Sample("I liked a film", "m1", ["m2"], "u2")]
    res, _ = CMP.evaluate_baselines(cat, {"synthetic": (samples, samples)}, {"synthetic": TRAIN}, CF.Config.quick())
    assert res["repeat"]["synthetic"]["dedup"]["recall@50"] == 0.0
    assert res["repeat"]["synthetic"]["standard"]["recall@50"] == 0.0  # each target is the other user's item


def test_random_rankings_give_recall_at_k_of_k_over_n():
    rng = random.Random(0)
    r = [rng.randrange(1000) for _ in range(20000)]
    assert E.ranking_metrics(r)["recall@10"] == pytest.approx(0.01, abs=0.003)
