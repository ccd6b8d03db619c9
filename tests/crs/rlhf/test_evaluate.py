"""Evaluation: ranking metrics by hand, samples and their dialogue / user groups, paired and
cluster bootstrap intervals."""

import math

import pytest

from crs_fast.crs.rlhf import evaluate as E


def test_cluster_bootstrap_resamples_whole_dialogues():
    import random

    rng = random.Random()
    a = [float(rng.random() < 0.3) for _ in range(40)]
    b = [float(rng.random() < 0.5) for _ in range(40)]
    single = E.cluster_bootstrap_diff(a, b, list(range(40)), n=500, seed=3)
    assert single["groups"] == 40 and single["lo"] <= single["diff"] <= single["hi"]
    assert single["diff"] == pytest.approx((sum(b) - sum(a)) / 40)
    # every sample five times inside its own dialogue: the same groups, so the same interval,
    # while the sample-level bootstrap (which takes the copies as independent) narrows
    a5, b5, g5 = ([x for x in v for _ in range(5)] for v in (a, b, list(range(40))))
    five = E.cluster_bootstrap_diff(a5, b5, g5, n=500, seed=3)
    assert five["lo"] == pytest.approx(single["lo"]) and five["hi"] == pytest.approx(single["hi"])
    naive = E.bootstrap_diff(a5, b5, n=500, seed=3)
    assert naive["hi"] - naive["lo"] < 0.7 * (five["hi"] - five["lo"])
    same = E.cluster_bootstrap_diff(a, a, list(range(40)))
    assert same["diff"] == same["lo"] == same["hi"] == 0
    with pytest.raises(ValueError, match="differ in length"):
        E.cluster_bootstrap_diff(a, b[:-1], list(range(40)))


def test_sample_groups_are_their_dialogue_or_user(tmp_path):
    from crs_fast.crs import generate_catalog, load_redial, write_synthetic_redial

    catalog = generate_catalog(60, seed=1)
    dialogues = list(load_redial(write_synthetic_redial(catalog, 12, tmp_path / "d.jsonl", seed=2)))
    index = {d.id: j for j, d in enumerate(dialogues)}
    for dedup in (False, True):
        samples = E.real_samples(dialogues, catalog, dedup=dedup)
        groups = [index[s.group] for s in samples]
        assert len(groups) == len(samples) > len(dialogues) and groups == sorted(groups)
        for j, d in enumerate(dialogues):
            mine = [s for s, g in zip(samples, groups, strict=True) if g == j]
            assert [(s.prompt, s.target) for s in mine] == [
                (s.prompt, s.target) for s in E.real_samples([d], catalog, dedup=dedup)
            ]
    # synthetic users: one sample per target (1-3), all of one user in one group
    samples = E.synthetic_samples(catalog, [11, 12, 13, 14, 15, 16])
    by_user: dict[str, set[str]] = {}
    for s in samples:
        by_user.setdefault(s.group, set()).add(s.prompt)
    assert len(by_user) == 6 and len(samples) > 6 and all(len(p) == 1 for p in by_user.values())


def test_ranking_metrics_by_hand():
    m = E.ranking_metrics([0, 4, None, 30])
    assert m["recall@1"] == 0.25 and m["recall@10"] == 0.5 and m["recall@50"] == 0.75
    assert math.isclose(m["mrr@10"], (1 + 1 / 5) / 4)
    assert math.isclose(m["ndcg@10"], (1 + 1 / math.log2(6)) / 4)


def test_bootstrap_interval_contains_the_difference():
    a = [0.0] * 50 + [1.0] * 50
    b = [1.0] * 80 + [0.0] * 20
    ci = E.bootstrap_diff(a, b, n=500)
    assert ci["lo"] <= ci["diff"] <= ci["hi"] and math.isclose(ci["diff"], 0.3)
