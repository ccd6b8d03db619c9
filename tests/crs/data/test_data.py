"""Loaders on the real datasets and on hand-written malformed files; labels; splits; CLI."""

import json
import re

import pytest
from helpers import real_data_dir

from crs_fast.cli import main
from crs_fast.crs import (
    DataError,
    feedback_labels,
    load_opendialkg,
    load_opendialkg_catalog,
    load_redial,
    load_redial_catalog,
    rec_samples,
    split_dialogues,
)


@pytest.fixture(scope="module")
def data():
    return real_data_dir()


@pytest.mark.parametrize(
    "name,count", [("train_data", 500), ("valid_data", 100), ("test_data", 300), ("train_extra", 950)]
)
def test_redial_counts_and_mentions(data, name, count):
    path = data / "redial" / f"{name}.jsonl"
    ds = load_redial(path)
    assert len(ds) == ds.stats.dialogues == count and ds.stats.skipped == 0
    assert all(d.turns and all(t.role in ("user", "system") for t in d.turns) for d in ds)
    # every @id is resolved (an item of its turn) or counted as unresolved
    raw_mentions = resolved = 0
    for line, d in zip(path.read_text().splitlines(), ds, strict=True):
        obj = json.loads(line)
        for msg in obj["messages"]:
            for movie in re.findall(r"@(\d+)", msg["text"]):
                raw_mentions += 1
                resolved += movie in obj["movieMentions"]
        assert all(item in obj["movieMentions"] for t in d.turns for item in t.items)
    assert ds.stats.mentions == raw_mentions
    assert ds.stats.mentions - ds.stats.unresolved_mentions == resolved
    # consecutive messages of one speaker are merged
    assert all(a.role != b.role for d in ds for a, b in zip(d.turns, d.turns[1:], strict=False))
    if name == "train_extra":
        assert all(t.time is None for d in ds for t in d.turns)


@pytest.mark.parametrize(
    "name,count", [("train.jsonl", 5547), ("valid.jsonl", 1188), ("test.jsonl", 1188), ("raw_examples.json", 5)]
)
def test_opendialkg_counts(data, name, count):
    catalog = load_opendialkg_catalog(data / "opendialkg" / "item_info.json")
    ds = load_opendialkg(data / "opendialkg" / name, catalog)
    assert len(ds) == count and ds.stats.skipped == 0
    if name.endswith(".jsonl"):
        assert ds.stats.linked_titles + ds.stats.unlinked_titles == sum(len(d.turns[-1].meta["rec_titles"]) for d in ds)
        assert ds.stats.linked_titles > 0.9 * (ds.stats.linked_titles + ds.stats.unlinked_titles)
    else:
        assert all(1 <= d.ratings["user"]["dialog_rating"] <= 5 for d in ds)
        assert ds.stats.skipped_actions > 0  # meta_thread actions
        assert any(t.meta["kg_paths"] for d in ds for t in d.turns)


def test_catalogs(data):
    movies = load_redial_catalog(data / "redial" / "movies_with_mentions.csv", data / "redial" / "movie_info.json")
    assert len(movies) == 6924 and "  " not in "".join(i.title for i in movies.items.values())
    assert sum(bool(i.attributes["genre"]) for i in movies.items.values()) > 6000
    items = load_opendialkg_catalog(data / "opendialkg" / "item_info.json", data / "opendialkg" / "item_ids.json")
    assert 0 < len(items) <= 3672


def test_labels_are_sane_on_redial(data):
    ds = load_redial(data / "redial" / "train_data.jsonl")
    labels = feedback_labels(ds)
    assert all(x.dwell >= 0 for x in labels if x.dwell is not None)
    liked = [
        x.sentiment_text
        for x in labels
        if x.sentiment_liked is not None and x.sentiment_liked > 0 and x.sentiment_text is not None
    ]
    disliked = [
        x.sentiment_text
        for x in labels
        if x.sentiment_liked is not None and x.sentiment_liked < 0 and x.sentiment_text is not None
    ]
    assert len(liked) > 100 and len(disliked) > 20
    assert sum(liked) / len(liked) > sum(disliked) / len(disliked)
    extra = feedback_labels(load_redial(data / "redial" / "train_extra.jsonl"))
    assert all(x.dwell is None for x in extra)  # no timeOffset there


def _write(tmp_path, lines):
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


GOOD = json.dumps(
    {
        "conversationId": "1",
        "initiatorWorkerId": 1,
        "respondentWorkerId": 2,
        "movieMentions": {"5": "A  Film (2000)"},
        "initiatorQuestions": [],
        "respondentQuestions": {},
        "messages": [
            {"text": "hi &quot;there&quot;", "senderWorkerId": 1, "timeOffset": 0},
            {"text": "try @5 or @9", "senderWorkerId": 2, "timeOffset": 5},
            {"text": "more", "senderWorkerId": 2, "timeOffset": 7},
        ],
    }
)


@pytest.mark.parametrize(
    "bad,reason",
    [
        ("{not json", "invalid JSON"),
        (json.dumps({"conversationId": "2", "initiatorWorkerId": 1}), "missing field"),
        (json.dumps(json.loads(GOOD) | {"messages": "hello"}), "'messages' must be list"),
        (json.dumps(json.loads(GOOD) | {"initiatorWorkerId": "one"}), "'initiatorWorkerId' must be int"),
        (json.dumps(json.loads(GOOD) | {"messages": [{"text": "x", "senderWorkerId": 9}]}), "neither"),
        ("[1, 2]", "expected a JSON object"),
    ],
)
def test_malformed_redial(tmp_path, bad, reason):
    path = _write(tmp_path, [GOOD, bad, json.dumps(json.loads(GOOD) | {"conversationId": "3"})])
    with pytest.raises(DataError, match=rf"bad\.jsonl:2: .*{reason}"):
        load_redial(path)
    ds = load_redial(path, on_error="skip")
    assert len(ds) == 2 and ds.stats.skipped == 1 and "bad.jsonl:2" in ds.stats.skip_reasons[0]


def test_redial_quirks(tmp_path):
    d = load_redial(_write(tmp_path, [GOOD]))[0]
    assert [t.role for t in d.turns] == ["user", "system"]
    assert d.turns[0].text == 'hi "there"' and d.turns[1].items == ["5"]
    assert d.turns[1].meta == {"messages": 2, "end_time": 7.0} and d.turns[1].time == 5.0
    assert d.ratings["titles"]["5"] == "A Film (2000)" and d.ratings["initiator"] == {}


def test_malformed_opendialkg(tmp_path):
    path = tmp_path / "turns.jsonl"
    path.write_text(
        json.dumps({"dialog_id": 1, "turn_id": 1, "context": ["hi"], "rec": ["X"], "resp": "X!"})
        + "\n"
        + json.dumps({"dialog_id": 1, "turn_id": 3, "context": "hi", "rec": [], "resp": ""})
        + "\n"
    )
    with pytest.raises(DataError, match=r"turns\.jsonl:2: field 'context' must be list"):
        load_opendialkg(path)
    assert load_opendialkg(path, on_error="skip").stats.skipped == 1
    raw = tmp_path / "rows.json"
    raw.write_text(json.dumps([{"Messages": "[{broken", "User Rating": "{}", "Assistant Rating": "{}"}]))
    with pytest.raises(DataError, match=r"rows\.json:row 1: 'Messages' is not valid JSON"):
        load_opendialkg(raw)


def test_opendialkg_csv_rows(tmp_path):
    messages = [
        {"type": "chat", "sender": "user", "message": "Do you like Heat?"},
        {"type": "action", "sender": "assistant", "action_id": "meta_thread/send_meta_message"},
        {
            "type": "action",
            "sender": "assistant",
            "action_id": "kgwalk/choose_path",
            "metadata": {"path": [0.0, [["Heat", "directed_by", "Michael Mann"]], "text"]},
        },
        {"type": "chat", "sender": "assistant", "message": "Yes, Michael Mann directed it."},
    ]
    path = tmp_path / "opendialkg.csv"
    import csv

    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, ["Messages", "User Rating", "Assistant Rating"])
        w.writeheader()
        w.writerow(
            {
                "Messages": json.dumps(messages),
                "User Rating": '{"dialog_rating": "4"}',
                "Assistant Rating": '{"dialog_rating": "5"}',
            }
        )
    ds = load_opendialkg(path)
    assert len(ds) == 1 and ds[0].ratings["user"]["dialog_rating"] == 4
    assert ds.stats.skipped_actions == 1 and ds[0].turns[1].meta["kg_paths"][0][1][0][2] == "Michael Mann"


def test_splits_and_samples(data):
    ds = load_redial(data / "redial" / "valid_data.jsonl")
    a = split_dialogues(ds, seed=3)
    b = split_dialogues(list(reversed(ds)), seed=3)
    assert [sorted(d.id for d in part) for part in a] == [sorted(d.id for d in part) for part in b]
    assert sum(map(len, a)) == len(ds) and split_dialogues(ds, seed=4) != a
    standard, dedup = rec_samples(ds), rec_samples(ds, dedup=True)
    assert len(dedup) < len(standard)
    assert all(s.targets[0] not in s.mentioned for s in dedup)
    assert any(s.targets[0] in s.mentioned for s in standard)


def test_cli_stats_and_synth(tmp_path, capsys):
    out = tmp_path / "synth.jsonl"
    assert main(["data", "synth", "--users", "12", "--out", str(out), "--seed", "5"]) == 0
    assert main(["data", "stats", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out.split("\n", 1)[1])
    assert report["counts"]["dialogues"] == 12 and report["coverage"]["dwell"] == 1.0
