"""What a run trains and is evaluated on: every ReDial training dialogue (train_data + train_extra),
ReDial's validation file for choices and its whole test file; OpenDialKG's processed turns with its
catalog; and a bad --redial-test file or one without the ReDial catalog fails with one line."""

import json

import pytest
from helpers import real_data_dir

from crs_fast.crs.data import load_redial
from crs_fast.crs.data.schema import DataError
from crs_fast.crs.rlhf import compare as CMP
from crs_fast.crs.rlhf import config as CF
from crs_fast.crs.rlhf import corpus as CO


def test_redial_uses_all_its_training_dialogues_valid_and_the_whole_test_file(tmp_path):
    root = real_data_dir() / "redial"
    data = CO.prepare_data(CF.Config.quick(real_data="on", redial_train_max=0, redial_eval_max=0), tmp_path)
    real_train = [d for d in data.train if not d.id.startswith("synth")]
    n_train = len(load_redial(root / "train_data.jsonl", on_error="skip"))
    extra = {d.id for d in load_redial(root / "train_extra.jsonl", on_error="skip")}
    assert len(real_train) == len({d.id for d in real_train}) > n_train  # train_extra added, no duplicate
    assert {d.id for d in real_train[n_train:]} <= extra
    assert len(data.real_test) == len(load_redial(root / "test_data.jsonl", on_error="skip"))  # not a prefix
    assert len(data.real_valid) == len(load_redial(root / "valid_data.jsonl", on_error="skip"))
    assert {d.id for d in data.real_valid}.isdisjoint(d.id for d in data.real_test)
    capped = CO.prepare_data(CF.Config.quick(real_data="on", redial_train_max=7, redial_eval_max=5), tmp_path)
    assert len([d for d in capped.train if not d.id.startswith("synth")]) == 7 and len(capped.real_test) == 5


def test_opendialkg_turns_catalog_and_final_turn_samples(tmp_path):
    root = real_data_dir() / "opendialkg"
    cfg = CF.Config.quick(real_data="on", dataset="opendialkg", redial_train_max=0, redial_eval_max=0)
    data = CO.prepare_data(cfg, tmp_path)
    assert data.dataset == "opendialkg" and data.real
    records = [json.loads(line) for line in (root / "test.jsonl").read_text().splitlines() if line.strip()]
    assert len(data.real_test) == len(records)
    starred = [it for it in data.catalog.items.values() if it.attributes.get("actor")]
    assert starred and all(it.attributes["star"] == it.attributes["actor"] for it in starred)
    assert data.pool and set(data.pool) <= set(data.catalog.ids())
    std, dedup, k = CMP.sample_sets(data.real_test, data.catalog, final_only=True)
    # one sample per linked item of each record's recommending (last) turn
    assert len(std) == sum(len(d.turns[-1].items) for d in data.real_test) > 0.9 * len(records)
    assert len({s.group for s in std}) <= len(records) and len(dedup) < len(std) and k >= 50
    # the policy reads every item the baselines count: each sample's mentioned items are tokens of its prompt
    from crs_fast.crs.rlhf.lm import items_in

    assert all(set(s.mentioned) <= set(items_in(s.prompt)) for s in std)
    assert sum(bool(s.mentioned) for s in std) > 0.5 * len(std)


def test_redial_test_file_errors(trained, tmp_path, capsys):
    """A malformed --redial-test file, or one given to a run without the ReDial catalog, stops
    `crs-fast eval` with one line naming the file, and nothing is written."""
    from crs_fast.cli import main
    from crs_fast.crs.rlhf import stages as ST

    cfg, out, _ = trained
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"conversationId": "1", "messages": "not a list"}\n')
    with pytest.raises(DataError, match="bad.jsonl"):
        ST.run_eval(cfg, out, redial_test=bad)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(DataError, match="no dialogues"):
        ST.run_eval(cfg, out, redial_test=empty)
    good = tmp_path / "good.jsonl"
    good.write_text((out / "data" / "synthetic_dialogues.jsonl").read_text().splitlines()[0] + "\n")
    good_odkg = tmp_path / "good_odkg.jsonl"
    good_odkg.write_text(
        json.dumps(
            {
                "dialog_id": 1,
                "turn_id": 1,
                "context": ["Do you like thrillers?"],
                "resp": "Try Heat.",
                "rec": ["Heat"],
                "entity": [],
            }
        )
        + "\n"
    )
    bad_odkg = tmp_path / "bad_odkg.jsonl"
    bad_odkg.write_text("[1, 2]\n")
    with pytest.raises(DataError, match="needs the ReDial catalog"):
        ST.run_eval(cfg, out, redial_test=good)  # the trained run uses a generated catalog
    with pytest.raises(DataError, match="needs the OpenDialKG catalog"):
        ST.run_eval(cfg, out, opendialkg_test=good_odkg)
    with pytest.raises(DataError, match="bad_odkg.jsonl"):
        ST.run_eval(cfg, out, opendialkg_test=bad_odkg)
    with pytest.raises(DataError, match="not both"):
        ST.run_eval(cfg, out, redial_test=good, opendialkg_test=good_odkg)
    assert not (out / "eval.json").exists()
    capsys.readouterr()  # what the calls above printed (the encoder loading)
    assert main(["eval", "--out", str(tmp_path / "no-run"), "--quick", "--redial-test", str(good)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("crs-fast eval:") and len(err.splitlines()) == 1


def test_items_a_turn_names_by_title_become_item_tokens():
    """OpenDialKG links titles to items without ``@ID`` marks: the linked items' tokens follow the
    text (so the policy sees what the baselines see), once, and a response's lead is not repeated."""
    from crs_fast.crs.data import generate_catalog
    from crs_fast.crs.data.schema import Turn
    from crs_fast.crs.rlhf.lm import item_token, items_in

    catalog = generate_catalog(5, seed=2)
    a, b, c = catalog.ids()[:3]
    t = Turn("user", f"I liked {catalog.items[a].title} and  @{b}", [a, b, "not-in-catalog", a])
    assert CO.turn_text(t, catalog) == f"I liked {catalog.items[a].title} and {item_token(b)} {item_token(a)}"
    redial = Turn("system", f"try @{c} or @{b}", [c, b])
    assert CO.turn_text(redial, catalog) == f"try {item_token(c)} or {item_token(b)}"  # nothing added
    s = Turn("system", "You would like that one", [c, a])
    assert CO.response_text(s, catalog) == f" {item_token(c)} You would like that one {item_token(a)}"
    p = CO.prompt([t, s], catalog)
    assert items_in(p) == [b, a, c, a]


def test_choice_folds_partition_the_real_training_dialogues(tmp_path):
    data = CO.prepare_data(CF.Config.quick(real_data="off"), tmp_path)
    for n, d in enumerate(data.train[:23]):  # 23 "real" ones among the synthetic
        d.id = f"real-{n}"
    data.real_valid = data.valid[:3]
    real = {d.id for d in CO.real_training(data)}
    assert len(real) == 23
    folds = CO.choice_folds(data, folds=5, seed=1)
    assert [f[0] for f in folds] == ["valid", "cv0", "cv1", "cv2", "cv3", "cv4"]
    assert folds[0][1] == data.train and folds[0][2] == data.real_valid
    held = [d.id for _, _, h in folds[1:] for d in h]
    assert sorted(held) == sorted(real) and len(set(held)) == 23  # each real dialogue held out once
    for _, train, h in folds[1:]:
        out = {d.id for d in h}
        assert 4 <= len(out) <= 5 and not out & {d.id for d in train}
        assert len(train) == len(data.train) - len(out)  # the synthetic ones always train
    assert [[d.id for d in h] for _, _, h in CO.choice_folds(data, folds=5, seed=1)[1:]] == [
        [d.id for d in h] for _, _, h in folds[1:]
    ]
    with pytest.raises(ValueError, match="folds must be >= 2"):
        CO.choice_folds(data, folds=1)
