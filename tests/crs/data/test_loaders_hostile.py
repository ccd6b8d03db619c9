"""Every loader fed hostile bytes: invalid UTF-8, UTF-16, binary, a BOM, deep nesting, wrong JSON
types in each field, under both error modes. Errors name the file and the line (or row, or
movie); skip mode skips exactly the bad record and says why; nothing is coerced silently."""

import json

import pytest

from crs_fast.crs import DataError, load_opendialkg, load_opendialkg_catalog, load_redial, load_redial_catalog
from crs_fast.crs.data.redial import most_mentioned

GOOD = {
    "conversationId": "1",
    "initiatorWorkerId": 1,
    "respondentWorkerId": 2,
    "movieMentions": {"5": "A Film (2000)"},
    "initiatorQuestions": {"5": {"suggested": 1, "seen": 0, "liked": 2}},
    "respondentQuestions": {},
    "messages": [
        {"text": "hi", "senderWorkerId": 1, "timeOffset": 0},
        {"text": "try @5", "senderWorkerId": 2, "timeOffset": 5},
    ],
}
TURN = {"dialog_id": 1, "turn_id": 1, "context": ["hi"], "rec": ["X"], "resp": "X!"}


def _good(i: int) -> bytes:
    return json.dumps(GOOD | {"conversationId": str(i)}).encode()


def _turn(i: int) -> bytes:
    return json.dumps(TURN | {"turn_id": i}).encode()


BAD_LINES = {
    "invalid UTF-8": b'{"conversationId": "\xff\xfe"}',
    "binary": bytes(range(256)).replace(b"\n", b""),
    "deeply nested": b"[" * 100_000 + b"]" * 100_000,
    "not JSON": b"{oops",
}


def _file(tmp_path, name: str, lines: list[bytes]) -> object:
    path = tmp_path / name
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


@pytest.mark.parametrize("what", BAD_LINES)
@pytest.mark.parametrize("dataset", ["redial", "opendialkg"])
def test_bad_line_names_file_and_line_or_is_skipped(tmp_path, what, dataset):
    good, load = (_good, load_redial) if dataset == "redial" else (_turn, load_opendialkg)
    path = _file(tmp_path, "d.jsonl", [good(1), BAD_LINES[what], good(2)])
    with pytest.raises(DataError, match=r"d\.jsonl:2: "):
        load(path)
    ds = load(path, on_error="skip")
    assert len(ds) == 2 and ds.stats.skipped == 1 and "d.jsonl:2" in ds.stats.skip_reasons[0]


@pytest.mark.parametrize("dataset", ["redial", "opendialkg"])
def test_utf8_bom_is_read(tmp_path, dataset):
    good, load = (_good, load_redial) if dataset == "redial" else (_turn, load_opendialkg)
    path = _file(tmp_path, "d.jsonl", [b"\xef\xbb\xbf" + good(1), good(2)])
    ds = load(path, on_error="skip")
    assert len(ds) == 2 and ds.stats.skipped == 0


def test_utf16_file_says_so(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_bytes(("\n".join([_good(1).decode(), _good(2).decode()]) + "\n").encode("utf-16"))
    with pytest.raises(DataError, match=r"d\.jsonl:1: the file is UTF-16"):
        load_redial(path)
    assert len(load_redial(path, on_error="skip")) == 0


@pytest.mark.parametrize(
    "change,reason",
    [
        ({"initiatorQuestions": {"5": {"liked": "yes"}}}, "must be an integer"),
        ({"initiatorQuestions": {"5": {"liked": None}}}, "must be an integer"),
        ({"initiatorQuestions": {"5": {"liked": 1.7}}}, "must be an integer"),
        ({"initiatorQuestions": {"5": {"liked": True}}}, "must be an integer"),
        ({"initiatorQuestions": {"5": "liked"}}, "must be an object"),
        ({"movieMentions": "5"}, "'movieMentions' must be"),
        ({"messages": [{"text": 3, "senderWorkerId": 1}]}, "'text' must be str"),
        ({"messages": ["hi"]}, r"messages\[0\] must be an object"),
        ({"respondentWorkerId": None}, "'respondentWorkerId' must be int"),
    ],
)
def test_redial_wrong_types(tmp_path, change, reason):
    path = _file(tmp_path, "d.jsonl", [_good(1), json.dumps(GOOD | {"conversationId": "7"} | change).encode()])
    with pytest.raises(DataError, match=rf"d\.jsonl:2: .*{reason}"):
        load_redial(path)
    ds = load_redial(path, on_error="skip")
    assert len(ds) == 1 and ds.stats.skipped == 1


def test_redial_labels_are_kept_exactly(tmp_path):
    path = _file(tmp_path, "d.jsonl", [json.dumps(GOOD | {"initiatorQuestions": {"5": {"liked": 2.0}}}).encode()])
    assert load_redial(path)[0].ratings["initiator"]["5"] == {"liked": 2}


@pytest.mark.parametrize("dataset", ["redial", "opendialkg"])
def test_duplicate_ids(tmp_path, dataset):
    good, load = (_good, load_redial) if dataset == "redial" else (_turn, load_opendialkg)
    path = _file(tmp_path, "d.jsonl", [good(1), good(2), good(1)])
    with pytest.raises(DataError, match=r"d\.jsonl:3: duplicate .*first at .*d\.jsonl:1"):
        load(path)
    ds = load(path, on_error="skip")
    assert len(ds) == 2 and ds.stats.skipped == 1


@pytest.mark.parametrize(
    "row,reason",
    [
        ([1, 2], "must be an object"),
        ({"Messages": "[{broken"}, "'Messages' is not valid JSON"),
        ({"Messages": json.dumps({"a": 1})}, "'Messages' must be a list"),
        (
            {"Messages": json.dumps([{"type": "action", "action_id": "kgwalk/choose_path", "metadata": "x"}])},
            r"\['metadata'\] must be an object",
        ),
        ({"Messages": json.dumps([{"type": "chat", "message": 5}])}, "'message' must be str"),
        ({"Messages": "[]", "User Rating": "[1]"}, "must be a JSON object"),
    ],
)
def test_opendialkg_raw_rows(tmp_path, row, reason):
    ok = {"Messages": json.dumps([{"type": "chat", "sender": "user", "message": "hi"}])}
    path = tmp_path / "rows.json"
    path.write_text(json.dumps([ok, row]))
    with pytest.raises(DataError, match=rf"rows\.json:row 2: .*{reason}"):
        load_opendialkg(path)
    ds = load_opendialkg(path, on_error="skip")
    assert len(ds) == 1 and ds.stats.skipped == 1


def test_opendialkg_non_integer_ratings_are_counted(tmp_path):
    row = {"Messages": "[]", "User Rating": json.dumps({"movie": "5", "book": "n/a", "music": 2.5})}
    path = tmp_path / "rows.json"
    path.write_text(json.dumps([row]))
    ds = load_opendialkg(path)
    assert ds[0].ratings["user"] == {"movie": 5}
    assert ds.stats.dropped_ratings == 2 and len(ds.stats.notes) == 2 and "'book'" in ds.stats.notes[0]


def _both_catalogs_raise(tmp_path, info, opendialkg_match: str, redial_match: str):
    """Both catalog loaders reject ``info`` (as OpenDialKG's item_info and ReDial's movie_info
    beside a one-movie CSV); returns the CSV's path."""
    with pytest.raises(DataError, match=opendialkg_match):
        load_opendialkg_catalog(info)
    csv_path = tmp_path / "movies.csv"
    csv_path.write_text("movieId,movieName,nbMentions\n1,A (2000),3\n")
    with pytest.raises(DataError, match=redial_match):
        load_redial_catalog(csv_path, info)
    return csv_path


@pytest.mark.parametrize(
    "content,reason",
    [
        (b"", "the file is empty"),
        (b'{"1": {"name": "A"', "invalid JSON"),
        (b'[{"name": "A"}]', "expected an object"),
        (b"\xff\xfe{\x00}\x00", "UTF-16"),
        (b'{"1": "\xff"}', "invalid UTF-8"),
    ],
)
def test_catalog_files_name_the_file(tmp_path, content, reason):
    info = tmp_path / "info.json"
    info.write_bytes(content)
    _both_catalogs_raise(tmp_path, info, rf"info\.json.*{reason}", rf"info\.json.*{reason}")


def test_catalog_attribute_string_is_an_error(tmp_path):
    info = tmp_path / "info.json"
    info.write_text(json.dumps({"1": {"name": "A", "genre": "comedy"}}))
    csv_path = _both_catalogs_raise(
        tmp_path,
        info,
        r"info\.json: item '1': 'genre' must be a list of strings",
        r"info\.json: movie '1': 'genre' must be a list of strings",
    )
    info.write_text(json.dumps({"1": {"genre": ["comedy", "drama"]}}))
    assert load_redial_catalog(csv_path, info)["1"].attributes["genre"] == ["comedy", "drama"]


def test_catalog_csv_bom_duplicates_and_counts(tmp_path):
    csv_path = tmp_path / "movies.csv"
    csv_path.write_bytes(b"\xef\xbb\xbfmovieId,movieName,nbMentions\n1,A (2000),3\n2,B,5\n")
    cat = load_redial_catalog(csv_path)
    assert cat.ids() == ["1", "2"] and most_mentioned(csv_path, 1) == ["2"]
    csv_path.write_text("movieId,movieName,nbMentions\n1,A (2000),3\n1,B,5\n")
    with pytest.raises(DataError, match=r"movies\.csv:3: duplicate movieId '1' \(first at row 2\)"):
        load_redial_catalog(csv_path)
    csv_path.write_text("movieId,movieName,nbMentions\n1,A (2000),many\n")
    with pytest.raises(DataError, match=r"movies\.csv:2: nbMentions must be an integer"):
        most_mentioned(csv_path, 1)
    csv_path.write_bytes(b"movieId,movieName\n1,\xff\n")
    with pytest.raises(DataError, match=r"movies\.csv:2: invalid UTF-8"):
        load_redial_catalog(csv_path)
