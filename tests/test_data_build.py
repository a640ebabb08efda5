"""Tests of building a dataset from loader records: validation messages, ordering, derived
columns."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from mfray.data.build import build_dataset
from mfray.data.schema import REQUIRED_POST_FIELDS, Dataset, label_space_of
from mfray.errors import DataError

SPACE = {"stance": ("support", "deny", "query", "comment"), "emotion": ("pos", "neg")}
T0 = 1_420_070_400  # 2015-01-01T00:00:00Z
FILE = "posts.jsonl"


def event(eid: str = "e1", **over: Any) -> dict[str, Any]:
    row = {"event_id": eid, "topic": f"topic {eid}", "topic_origin": "given", "source": "test",
           "split": "dev", "metadata": None, "_file": "events.json"}
    row.update(over)
    return row


def post(pid: str, parent: str | None = None, t: float = 0, *, thread: str = "t1",
         eid: str = "e1", stance: str | None = "comment", **over: Any) -> dict[str, Any]:
    row = {"event_id": eid, "thread_id": thread, "post_id": pid, "parent_id": parent,
           "time": T0 + t, "text": f"text {pid}", "user_id": f"u{pid}",
           "labels": {"stance": stance}, "_file": FILE, "_record": f"line {pid}"}
    row.update(over)
    return row


def build(posts: list[dict[str, Any]], events: list[dict[str, Any]] | None = None) -> Dataset:
    return build_dataset("toy", SPACE, events if events is not None else [event()], posts)


def small() -> Dataset:
    """Two events: e1 with two threads (one reply to a reply), e2 with one thread."""
    return build_dataset(
        "toy", SPACE, [event("e1"), event("e2", split="test")],
        [
            post("s1", None, 0, stance="support"),
            post("r1", "s1", 10, stance="deny"),
            post("r2", "r1", 20, stance=None, labels={"stance": None, "emotion": "neg"}),
            post("s2", None, 5, thread="t2"),
            post("r3", "s2", 30, thread="t2", stance="query"),
            post("x1", None, 100, eid="e2", thread="t9", stance=None),
            post("x2", "x1", 160, eid="e2", thread="t9"),
        ],
        notes={"origin": "unit test"},
    )


def assert_located(exc: DataError, record: str, field: str, file: str = FILE) -> None:
    assert (exc.file, exc.record, exc.field) == (file, record, field)
    text = str(exc)
    assert file in text and record in text and f"'{field}'" in text


# --------------------------------------------------------------------------------------------
# validation


@pytest.mark.parametrize("key", REQUIRED_POST_FIELDS)
def test_missing_required_field(key: str) -> None:
    bad = post("r1", "s1", 10)
    del bad[key]
    with pytest.raises(DataError, match="required field is missing") as exc:
        build([post("s1"), bad])
    assert_located(exc.value, "line r1", key)


def test_empty_text_is_allowed_but_empty_ids_are_not() -> None:
    ds = build([post("s1", text="")])
    assert ds.posts["text"].to_pylist() == [""]
    with pytest.raises(DataError, match="required field is missing") as exc:
        build([post("s1", thread_id="")])
    assert_located(exc.value, "line s1", "thread_id")


@pytest.mark.parametrize(("key", "value"), [("post_id", 5), ("thread_id", 1.0), ("text", None),
                                            ("parent_id", 7), ("user_id", 3), ("event_id", [])])
def test_wrong_type(key: str, value: Any) -> None:
    bad = post("r1", "s1", 10, **{key: value})
    with pytest.raises(DataError) as exc:
        build([post("s1"), bad])
    assert_located(exc.value, "line r1", key)


def test_record_defaults_to_the_post_id() -> None:
    bad = post("r1", "s1", 10, labels={"stance": "agree"})
    del bad["_record"]
    with pytest.raises(DataError) as exc:
        build([post("s1"), bad])
    assert_located(exc.value, "r1", "labels.stance")


def test_unknown_label() -> None:
    with pytest.raises(DataError, match="unknown label 'agree'") as exc:
        build([post("s1"), post("r1", "s1", 10, labels={"stance": "agree"})])
    assert_located(exc.value, "line r1", "labels.stance")


def test_unknown_dimension() -> None:
    with pytest.raises(DataError, match="unknown action dimension") as exc:
        build([post("s1"), post("r1", "s1", 10, labels={"sarcasm": "yes"})])
    assert_located(exc.value, "line r1", "labels.sarcasm")


def test_labels_not_an_object() -> None:
    with pytest.raises(DataError) as exc:
        build([post("s1", labels=["comment"])])
    assert_located(exc.value, "line s1", "labels")


def test_reply_earlier_than_its_parent() -> None:
    with pytest.raises(DataError, match="earlier than its parent s1") as exc:
        build([post("s1", None, 100), post("r1", "s1", 50)])
    assert_located(exc.value, "line r1", "time")


def test_reply_at_the_same_time_as_its_parent_is_fine() -> None:
    assert build([post("s1", None, 100), post("r1", "s1", 100)]).posts.num_rows == 2


def test_empty_event() -> None:
    with pytest.raises(DataError, match="event has no posts") as exc:
        build([post("s1")], [event("e1"), event("e2")])
    assert_located(exc.value, "e2", "posts", file="events.json")


def test_duplicate_post_id() -> None:
    with pytest.raises(DataError, match="duplicate post id") as exc:
        build([post("s1"), post("r1", "s1", 10), post("r1", "s1", 20, _record="line 9")])
    assert_located(exc.value, "line 9", "post_id")


def test_two_sources_in_one_thread() -> None:
    with pytest.raises(DataError, match="thread t1 has two source posts") as exc:
        build([post("s1"), post("s2", None, 5)])
    assert_located(exc.value, "line s2", "parent_id")


def test_undeclared_event() -> None:
    with pytest.raises(DataError, match="not declared") as exc:
        build([post("s1"), post("z1", eid="e9", thread="t9")])
    assert_located(exc.value, "line z1", "event_id")


@pytest.mark.parametrize("value", ["yesterday", True, float("nan"), [1]])
def test_unreadable_time(value: Any) -> None:
    with pytest.raises(DataError, match="unreadable time") as exc:
        build([post("s1", time=value)])
    assert_located(exc.value, "line s1", "time")


def test_bad_profile_field() -> None:
    with pytest.raises(DataError, match="whole number") as exc:
        build([post("s1", profile={"followers_count": "many"})])
    assert_located(exc.value, "line s1", "profile.followers_count")


@pytest.mark.parametrize("key", ["event_id", "topic", "topic_origin", "source"])
def test_event_missing_field(key: str) -> None:
    bad = event("e1", _record="event 1")
    del bad[key]
    with pytest.raises(DataError, match="non-empty string") as exc:
        build([post("s1")], [bad])
    assert_located(exc.value, "event 1", key, file="events.json")


def test_duplicate_event_id() -> None:
    with pytest.raises(DataError, match="duplicate event id") as exc:
        build([post("s1")], [event("e1"), event("e1")])
    assert_located(exc.value, "e1", "event_id", file="events.json")


@pytest.mark.parametrize(("key", "value"), [("metadata", {"veracity": "true"}), ("split", 3)])
def test_event_optional_field_of_wrong_type(key: str, value: Any) -> None:
    with pytest.raises(DataError) as exc:
        build([post("s1")], [event("e1", _record="event 1", **{key: value})])
    assert_located(exc.value, "event 1", key, file="events.json")


# --------------------------------------------------------------------------------------------
# ordering and derived columns


def test_ordering_by_time_then_numeric_id() -> None:
    ds = build([post("100"), post("10", "100", 5), post("9", "100", 5), post("b", "100", 5),
                post("a", "100", 5), post("1", "100", 7), post("99", "100", 3)])
    assert ds.posts["post_id"].to_pylist() == ["100", "99", "9", "10", "a", "b", "1"]


def test_context_is_the_thread_source() -> None:
    posts = small().posts.to_pylist()
    ctx = {p["post_id"]: p["context_post_id"] for p in posts}
    assert ctx == {"s1": None, "s2": None, "r1": "s1", "r2": "s1", "r3": "s2", "x1": None,
                   "x2": "x1"}
    parents = {p["post_id"]: p["parent_id"] for p in posts}
    assert parents["r2"] == "r1"  # the parent is kept too


def test_seconds_since_start_per_event() -> None:
    posts = small().posts.to_pylist()
    got = {p["post_id"]: p["seconds_since_start"] for p in posts}
    assert got == {"s1": 0.0, "s2": 5.0, "r1": 10.0, "r2": 20.0, "r3": 30.0, "x1": 0.0,
                   "x2": 60.0}
    assert [p["post_id"] for p in posts] == ["s1", "s2", "r1", "r2", "r3", "x1", "x2"]


def test_time_formats_are_read_as_utc() -> None:
    ds = build([post("s1", time="Thu Jan 01 00:00:00 +0000 2015"),
                post("r1", "s1", time="2015-01-01T01:00:00+01:00"),  # the same instant
                post("r2", "s1", time=datetime(2015, 1, 1, 0, 0, 30)),  # naive: UTC
                post("r3", "s1", time=T0 + 60)])
    times = ds.posts["time"].to_pylist()
    base = datetime(2015, 1, 1, tzinfo=UTC)
    assert [(t - base).total_seconds() for t in times] == [0.0, 0.0, 30.0, 60.0]
    assert all(t.tzinfo is not None for t in times)


def test_labels_cover_every_dimension() -> None:
    labels = small().posts["labels"].to_pylist()
    assert labels[0] == {"stance": "support", "emotion": None}
    assert {"stance": None, "emotion": "neg"} in labels
    assert label_space_of(small().posts.schema) == SPACE
