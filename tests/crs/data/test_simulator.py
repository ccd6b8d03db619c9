"""The synthetic users: oracle against random recommenders, determinism, batching, the writer."""

import pathlib
import random
import statistics
import tempfile

import pytest

from crs_fast.crs import UserSimulator, generate_catalog, load_redial, write_synthetic_redial
from crs_fast.crs.data.simulator import SimulatorBatch


@pytest.fixture(scope="module")
def catalog():
    return generate_catalog(400, seed=1)


def _run(sim, seed, policy, rng):
    first = sim.reset(seed)
    transcript, done = [first], False
    while not done:
        recs = [sorted(sim.targets)[0]] if policy == "oracle" else [rng.choice(sim.catalog.ids())]
        reply, feedback, done = sim.step("How about this one?", recs)
        transcript.append((reply, feedback))
    return transcript


def test_oracle_beats_random(catalog):
    sim = UserSimulator(catalog)
    sats = {}
    for policy in ("oracle", "random"):
        rng = random.Random(0)
        sats[policy] = statistics.fmean(_run(sim, s, policy, rng)[-1][1].satisfaction for s in range(100))
    assert sats["oracle"] > 0.95 and sats["random"] < 0.5 and sats["oracle"] - sats["random"] > 0.5


def test_feedback_follows_fit(catalog):
    sim = UserSimulator(catalog)
    sim.reset(7)
    target = sorted(sim.targets)[0]
    worst = min(catalog.ids(), key=sim.fit)
    _, bad, done = sim.step("try", [worst])
    assert not done and bad.sentiment < 0 and not bad.accepted
    _, good, done = sim.step("try", [target])
    assert done and good.accepted and good.sentiment > bad.sentiment and good.dwell > bad.dwell


def test_same_seed_same_dialogue(catalog):
    a = _run(UserSimulator(catalog), 11, "random", random.Random(2))
    b = _run(UserSimulator(catalog), 11, "random", random.Random(2))
    assert a == b


def test_batch_equals_sequential(catalog):
    batch = SimulatorBatch(catalog, 3)
    first = batch.reset([1, 2, 3])
    assert first == [UserSimulator(catalog).reset(s) for s in (1, 2, 3)]
    recs = [[catalog.ids()[0]]] * 3
    replies, feedback, done = batch.step(["x"] * 3, recs)
    for k, seed in enumerate((1, 2, 3)):
        single = UserSimulator(catalog)
        single.reset(seed)
        assert single.step("x", recs[k]) == (replies[k], feedback[k], done[k])


def test_writer_round_trip(tmp_path, catalog):
    path = write_synthetic_redial(catalog, 25, tmp_path / "s.jsonl", seed=4)
    again = write_synthetic_redial(catalog, 25, tmp_path / "t.jsonl", seed=4)
    assert path.read_text() == again.read_text()
    ds = load_redial(path)
    assert len(ds) == 25 and ds.stats.unresolved_mentions == 0
    assert all(t.time is not None for d in ds for t in d.turns)
    assert all(d.ratings["initiator"] for d in ds)


def test_pool_bounds_anchors_and_targets_but_not_what_may_be_suggested(catalog):
    pool = catalog.ids()[:60]
    sim = UserSimulator(catalog, pool=pool)
    outside = set(catalog.ids()) - set(pool)
    for seed in range(40):
        sim.reset(seed)
        assert set(sim.liked) <= set(pool) and sim.targets <= set(pool)
    # an item outside the pool is still judged by its fit, not treated as unknown
    best = max(outside, key=sim.fit)
    assert sim.fit(best) >= 0.25
    sim.step("try", [best])
    assert sim.fits[-1] == sim.fit(best)
    with pytest.raises(ValueError, match="not in the catalog"):
        UserSimulator(catalog, pool=["no-such-id"])
    path = write_synthetic_redial(catalog, 10, pathlib.Path(tempfile.mkdtemp()) / "p.jsonl", seed=1, pool=pool)
    suggested = {i for d in load_redial(path) for t in d.turns if t.role == "system" for i in t.items}
    assert suggested and suggested <= set(pool)
