"""Generic JSONL format: reading, round trips through the writer, and every bad-input case."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from mfray.data.jsonl import load_jsonl, write_jsonl
from mfray.data.rumdect import load_rumdect
from mfray.data.schema import Dataset
from mfray.errors import DataError

FIXTURES = Path(__file__).parent / "fixtures"
SMALL = FIXTURES / "jsonl" / "small.jsonl"


def test_fixture() -> None:
    ds = load_jsonl(SMALL)
    assert ds.name == "fixture-jsonl"
    assert ds.label_space == {"stance": ("support", "deny", "query", "comment"),
                              "belief": ("believe", "doubt")}
    assert ds.notes == {"origin": "hand-written test fixture"}
    events = {e["event_id"]: e for e in ds.events.to_pylist()}
    assert events["dam"]["topic_origin"] == "given" and events["dam"]["source"] == "jsonl"
    assert events["dam"]["split"] == "train"
    assert json.loads(events["dam"]["metadata"]) == {"veracity": "false"}
    # no topic: the earliest source post (q1), not the first one in the file (q2)
    assert events["fog"]["topic"] == "Strange fog rolls in (fictional)"
    assert events["fog"]["topic_origin"] == "earliest-source-post"
    assert events["fog"]["source"] == "synthetic"

    posts = {p["post_id"]: p for p in ds.posts.to_pylist()}
    assert posts["p2"]["time"] == datetime(2016, 5, 1, 12, 0, 3, 250_000, tzinfo=UTC)
    assert posts["p3"]["time"] == datetime.fromtimestamp(1462104100, tz=UTC)
    assert posts["p10"]["time"] == datetime(2016, 5, 1, 10, 30, tzinfo=UTC)  # +02:00
    assert [p["post_id"] for p in ds.posts_of("dam").to_pylist()] == [
        "p10", "p1", "p2", "p3", "p11"]
    assert posts["p3"]["context_post_id"] == "p1" and posts["p3"]["parent_id"] == "p2"
    assert posts["p2"]["labels"] == {"stance": "query", "belief": "doubt"}
    assert posts["p3"]["labels"] == {"stance": "deny", "belief": None}
    assert posts["p1"]["profile"]["followers_count"] == 2500
    assert posts["p1"]["profile"]["description"] == "Local news, made up for tests"
    assert posts["p3"]["profile"]["gender"] == "f" and posts["p3"]["profile"]["verified"] is None
    assert posts["p2"]["profile"] is None and posts["q1"]["user_id"] is None
    assert posts["p11"]["text"] == ""


def _same(a: Dataset, b: Dataset) -> None:
    assert (a.name, a.label_space, a.notes) == (b.name, b.label_space, b.notes)
    assert a.events.equals(b.events)
    assert a.posts.equals(b.posts)
    assert a.posts.schema.metadata == b.posts.schema.metadata


def test_round_trip_of_jsonl(tmp_path: Path) -> None:
    ds = load_jsonl(SMALL)
    out = write_jsonl(ds, tmp_path / "a.jsonl")
    _same(ds, load_jsonl(out))
    # writing is deterministic: the same dataset gives the same bytes
    assert write_jsonl(load_jsonl(out), tmp_path / "b.jsonl").read_bytes() == out.read_bytes()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp leftovers


def test_round_trip_of_converted_rumdect(tmp_path: Path) -> None:
    ds = load_rumdect(FIXTURES / "rumdect")
    back = load_jsonl(write_jsonl(ds, tmp_path / "rumdect.jsonl"))
    _same(ds, back)
    assert back.events["source"].to_pylist() == ["rumdect", "rumdect"]


# ---------------------------------------------------------------------------------------------
# bad input: every error names the file, the line and the field

HEADER = {"type": "dataset", "name": "t", "label_space": {"stance": ["support", "deny"]}}
EVENT = {"type": "event", "event_id": "e1", "topic": "topic"}
SOURCE = {"type": "post", "event_id": "e1", "thread_id": "t1", "post_id": "p1",
          "time": 100, "text": "source", "labels": {"stance": "support"}}
REPLY = {"type": "post", "event_id": "e1", "thread_id": "t1", "post_id": "p2",
         "parent_id": "p1", "time": 200, "text": "reply", "user_id": "u2",
         "profile": {"followers_count": 3}, "labels": {"stance": "deny"}}


def _file(tmp_path: Path, *lines: Any) -> Path:
    path = tmp_path / "bad.jsonl"
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines),
                    encoding="utf-8")
    return path


def _expect(path: Path, line: int, field: str, words: str = "") -> None:
    with pytest.raises(DataError) as err:
        load_jsonl(path)
    exc, msg = err.value, str(err.value)
    assert (exc.file, exc.record, exc.field) == (str(path), f"line {line}", field), msg
    assert msg.startswith(f"{path}: record line {line}: field '{field}': "), msg
    assert words in msg, msg


def test_valid_base_loads(tmp_path: Path) -> None:
    assert load_jsonl(_file(tmp_path, HEADER, EVENT, SOURCE, REPLY)).posts.num_rows == 2


def test_broken_json(tmp_path: Path) -> None:
    _expect(_file(tmp_path, HEADER, EVENT, '{"type": "post", "event_id": '), 3, "(syntax)",
            "broken JSON")


def test_not_an_object(tmp_path: Path) -> None:
    _expect(_file(tmp_path, HEADER, EVENT, "[1, 2]"), 3, "(record)", "list")


@pytest.mark.parametrize("key", ["event_id", "thread_id", "post_id", "time", "text"])
def test_post_missing_required_field(tmp_path: Path, key: str) -> None:
    reply = {k: v for k, v in REPLY.items() if k != key}
    _expect(_file(tmp_path, HEADER, EVENT, SOURCE, reply), 4, key, "missing")


def test_event_and_header_missing_required_field(tmp_path: Path) -> None:
    _expect(_file(tmp_path, HEADER, {"type": "event"}, SOURCE), 2, "event_id", "missing")
    _expect(_file(tmp_path, {"type": "dataset", "label_space": {"s": ["a"]}}), 1, "name")
    _expect(_file(tmp_path, {"type": "dataset", "name": "x"}), 1, "label_space")


@pytest.mark.parametrize(
    ("key", "value", "field"),
    [
        ("post_id", 2, "post_id"),
        ("event_id", ["e1"], "event_id"),
        ("thread_id", {"t": 1}, "thread_id"),
        ("parent_id", 1, "parent_id"),
        ("user_id", ["u"], "user_id"),
        ("text", 5, "text"),
        ("time", True, "time"),
        ("time", "noon", "time"),
        ("labels", ["deny"], "labels"),
        ("profile", "a user", "profile"),
        ("profile", {"followers_count": "lots"}, "profile.followers_count"),
        ("profile", {"verified": "perhaps"}, "profile.verified"),
        ("profile", {"created_at": "long ago"}, "profile.created_at"),
    ],
)
def test_post_wrong_type(tmp_path: Path, key: str, value: Any, field: str) -> None:
    _expect(_file(tmp_path, HEADER, EVENT, SOURCE, {**REPLY, key: value}), 4, field)


@pytest.mark.parametrize(
    ("key", "value"), [("topic", 3), ("split", 1), ("metadata", [1]), ("source", False)])
def test_event_wrong_type(tmp_path: Path, key: str, value: Any) -> None:
    _expect(_file(tmp_path, HEADER, {**EVENT, key: value}, SOURCE), 2, key)


def test_header_wrong_type(tmp_path: Path) -> None:
    _expect(_file(tmp_path, {**HEADER, "label_space": {"stance": "support"}}), 1,
            "label_space.stance")
    _expect(_file(tmp_path, {**HEADER, "label_space": {"stance": ["a", "a"]}}), 1,
            "label_space.stance", "unique")
    _expect(_file(tmp_path, {**HEADER, "notes": "n"}), 1, "notes")


def test_unknown_label_and_dimension(tmp_path: Path) -> None:
    bad = {**REPLY, "labels": {"stance": "agree"}}
    _expect(_file(tmp_path, HEADER, EVENT, SOURCE, bad), 4, "labels.stance", "'agree'")
    bad = {**REPLY, "labels": {"belief": "doubt"}}
    _expect(_file(tmp_path, HEADER, EVENT, SOURCE, bad), 4, "labels.belief", "dimension")


def test_unknown_record_type_and_keys(tmp_path: Path) -> None:
    _expect(_file(tmp_path, HEADER, EVENT, {**SOURCE, "type": "tweet"}), 3, "type", "'tweet'")
    _expect(_file(tmp_path, HEADER, EVENT, {k: v for k, v in SOURCE.items() if k != "type"}),
            3, "type")
    _expect(_file(tmp_path, HEADER, EVENT, {**SOURCE, "parent": "p0"}), 3, "parent",
            "unknown key")
    _expect(_file(tmp_path, HEADER, EVENT, {**SOURCE, "profile": {"karma": 1}}), 3,
            "profile.karma", "unknown profile key")
    _expect(_file(tmp_path, HEADER, {**EVENT, "title": "x"}), 2, "title")


def test_header_must_come_first_and_once(tmp_path: Path) -> None:
    _expect(_file(tmp_path, EVENT, HEADER), 1, "type", "header")
    _expect(_file(tmp_path, HEADER, EVENT, HEADER, SOURCE), 3, "type")
    _expect(_file(tmp_path, ""), 1, "type", "empty file")


def test_reply_earlier_than_parent(tmp_path: Path) -> None:
    _expect(_file(tmp_path, HEADER, EVENT, SOURCE, {**REPLY, "time": 50}), 4, "time",
            "earlier than its parent p1")


def test_empty_event(tmp_path: Path) -> None:
    other = {"type": "event", "event_id": "e2", "topic": "nothing happened"}
    _expect(_file(tmp_path, HEADER, EVENT, other, SOURCE), 3, "posts", "no posts")


def test_event_ids(tmp_path: Path) -> None:
    _expect(_file(tmp_path, HEADER, EVENT, SOURCE, EVENT), 4, "event_id", "duplicate")
    _expect(_file(tmp_path, HEADER, EVENT, SOURCE, {**REPLY, "event_id": "e9"}), 4,
            "event_id", "not declared")
    _expect(_file(tmp_path, HEADER, EVENT, SOURCE, {**REPLY, "post_id": "p1"}), 4,
            "post_id", "duplicate")


def test_topic_cannot_be_derived(tmp_path: Path) -> None:
    no_topic = {"type": "event", "event_id": "e1"}
    _expect(_file(tmp_path, HEADER, no_topic, {**SOURCE, "text": " "}, REPLY), 2, "topic")
    _expect(_file(tmp_path, HEADER, {**EVENT, "topic": ""}, SOURCE), 2, "topic")


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(DataError) as err:
        load_jsonl(tmp_path / "absent.jsonl")
    assert "absent.jsonl" in str(err.value)


REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "rumoureval2017-dev"


@pytest.mark.real_data
def test_round_trip_of_real_rumoureval(tmp_path: Path) -> None:
    if not REAL.is_dir():
        pytest.skip(f"real data not found at {REAL}")
    from mfray.data.rumoureval import load_rumoureval

    ds = load_rumoureval(REAL)
    _same(ds, load_jsonl(write_jsonl(ds, tmp_path / "rumoureval.jsonl")))
