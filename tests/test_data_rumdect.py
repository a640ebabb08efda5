"""Weibo rumdect loader: the hand-written fixture, layouts, and every bad-input case."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from mfray.data.rumdect import BEHAVIOUR, load_rumdect
from mfray.errors import DataError

FIXTURE = Path(__file__).parent / "fixtures" / "rumdect"


def _posts(ds: Any) -> dict[str, dict[str, Any]]:
    return {p["post_id"]: p for p in ds.posts.to_pylist()}


def test_fixture_folder() -> None:
    ds = load_rumdect(FIXTURE)
    assert ds.name == "rumdect"
    assert ds.label_space == {BEHAVIOUR: ("share", "comment")}
    events = {e["event_id"]: e for e in ds.events.to_pylist()}
    assert sorted(events) == ["E100", "E200"]  # E300 is in Weibo.txt only: ignored
    assert json.loads(events["E100"]["metadata"]) == {"rumour": True}
    assert json.loads(events["E200"]["metadata"]) == {"rumour": False}
    assert events["E100"]["topic"] == "虚构消息：某市明天全天停水（测试数据）"
    # the source's text is empty: the topic falls back to original_text
    assert events["E200"]["topic"] == "另一个虚构话题：某地出现神秘光点（测试数据）"
    assert {e["topic_origin"] for e in events.values()} == {"source-post"}
    assert ds.posts.num_rows == 8

    posts = _posts(ds)
    assert {p["thread_id"] for p in posts.values() if p["event_id"] == "E100"} == {"3001"}
    assert posts["3001"]["parent_id"] is None and posts["3001"]["labels"] == {BEHAVIOUR: None}
    assert posts["3003"]["parent_id"] == "3002"
    assert posts["3004"]["parent_id"] == "3001"  # parent 9999 is not in the event
    assert posts["3005"]["parent_id"] == "3001"  # no parent at all
    assert posts["3006"]["parent_id"] == "3003"  # integer mids read as strings
    assert posts["4001"]["parent_id"] is None  # parent == own mid: the source
    assert posts["3002"]["text"] == "" and posts["3002"]["labels"][BEHAVIOUR] == "share"
    assert posts["3004"]["labels"][BEHAVIOUR] == "comment"
    assert all(p["context_post_id"] == "3001" for k, p in posts.items()
               if k.startswith("30") and k != "3001")


def test_time_order_and_profiles() -> None:
    ds = load_rumdect(FIXTURE)
    e100 = ds.posts_of("E100").to_pylist()
    assert [p["post_id"] for p in e100] == ["3001", "3002", "3004", "3003", "3005", "3006"]
    assert [p["seconds_since_start"] for p in e100] == [0, 60, 100, 120, 200, 300]
    posts = _posts(ds)
    src = posts["3001"]["profile"]
    assert src["location"] == "北京 海淀区" and src["description"] == "一个虚构的本地新闻账号"
    assert (src["gender"], src["verified"], src["followers_count"], src["friends_count"],
            src["statuses_count"], src["favourites_count"], src["bi_followers_count"]) == (
        "m", True, 5000, 300, 12000, 10, 150)
    assert src["created_at"].timestamp() == 1300000000
    assert posts["3001"]["user_id"] == "11" and posts["3004"]["user_id"] == "14"
    assert posts["3004"]["profile"]["gender"] is None  # "n" carries no information
    assert posts["3003"]["profile"]["followers_count"] == 123
    assert posts["3003"]["profile"]["created_at"].timestamp() == 1350000000
    assert posts["3002"]["profile"]["created_at"] is None


def test_single_file_finds_label_file_next_to_it() -> None:
    ds = load_rumdect(FIXTURE / "E200.json")
    assert ds.event_ids() == ["E200"]
    assert json.loads(ds.events["metadata"][0].as_py()) == {"rumour": False}


def test_release_layout_and_no_label_file(tmp_path: Path) -> None:
    root = tmp_path / "rumdect"
    (root / "Weibo").mkdir(parents=True)
    shutil.copy(FIXTURE / "Weibo.txt", root)
    for name in ("E100.json", "E200.json"):
        shutil.copy(FIXTURE / name, root / "Weibo")
    for path in (root, root / "Weibo"):
        assert load_rumdect(path).events["metadata"].to_pylist() == [
            '{"rumour": true}', '{"rumour": false}']
    (root / "Weibo.txt").unlink()
    assert load_rumdect(root).events["metadata"].to_pylist() == [None, None]


# ---------------------------------------------------------------------------------------------
# bad input: every error names the file, the record and the field


def _base() -> list[dict[str, Any]]:
    return json.loads((FIXTURE / "E100.json").read_text(encoding="utf-8"))


def _write(tmp_path: Path, records: Any, name: str = "E9.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
    return path


def _expect(path: Path, record: str, field: str, words: str = "") -> None:
    with pytest.raises(DataError) as err:
        load_rumdect(path)
    exc, msg = err.value, str(err.value)
    assert exc.file is not None and exc.file.endswith(path.name), msg
    assert exc.record is not None and exc.record.startswith(record), msg
    assert exc.field == field, msg
    assert path.name in msg and f"record {exc.record}" in msg and f"field '{field}'" in msg
    assert words in msg


_DROP = object()  # a change that removes the key


def _mutated(index: int, **changes: Any) -> list[dict[str, Any]]:
    records = copy.deepcopy(_base())
    for key, value in changes.items():
        if value is _DROP:
            del records[index][key]
        else:
            records[index][key] = value
    return records


def test_broken_json(tmp_path: Path) -> None:
    path = tmp_path / "E9.json"
    path.write_text('[{"mid": "1", "t": 1},\n {"mid": "2", "t": }]', encoding="utf-8")
    _expect(path, "line 2", "(syntax)", "broken JSON")


@pytest.mark.parametrize(("index", "key"), [(0, "mid"), (2, "mid"), (3, "t")])
def test_missing_required_field(tmp_path: Path, index: int, key: str) -> None:
    path = _write(tmp_path, _mutated(index, **{key: _DROP}))
    _expect(path, str(index), key, "missing")


@pytest.mark.parametrize(
    ("index", "key", "value", "field"),
    [
        (1, "t", "yesterday", "t"),
        (1, "t", True, "t"),
        (2, "mid", 3.5, "mid"),
        (3, "parent", ["3002"], "parent"),
        (3, "uid", {"id": 1}, "uid"),
        (3, "text", 5, "text"),
        (0, "original_text", 5, "original_text"),
        (2, "followers_count", "many", "profile.followers_count"),
        (2, "verified", "maybe", "profile.verified"),
        (2, "user_created_at", "last year", "profile.created_at"),
    ],
)
def test_wrong_type(tmp_path: Path, index: int, key: str, value: Any, field: str) -> None:
    _expect(_write(tmp_path, _mutated(index, **{key: value})), str(index), field)


def test_record_not_an_object(tmp_path: Path) -> None:
    records = _base()
    records[2] = "3004"
    _expect(_write(tmp_path, records), "2", "(record)")


def test_unknown_label_in_label_file(tmp_path: Path) -> None:
    shutil.copy(FIXTURE / "E200.json", tmp_path)
    (tmp_path / "Weibo.txt").write_text("eid:E200\tlabel:0\t4001\neid:E201\tlabel:2\t1\n")
    with pytest.raises(DataError) as err:
        load_rumdect(tmp_path)
    msg = str(err.value)
    assert "Weibo.txt" in msg and "record line 2" in msg and "field 'label'" in msg
    assert "'2'" in msg


def test_reply_earlier_than_parent(tmp_path: Path) -> None:
    path = _write(tmp_path, _mutated(3, t=1400000010))  # 3003 replies to 3002 (t=...060)
    _expect(path, "3 (mid 3003)", "time", "earlier than its parent 3002")


def test_reply_earlier_than_source(tmp_path: Path) -> None:
    path = _write(tmp_path, _mutated(4, t=1399999999))  # 3005 falls back to the source
    _expect(path, "4 (mid 3005)", "time", "earlier than its parent 3001")


def test_duplicate_mid(tmp_path: Path) -> None:
    _expect(_write(tmp_path, _mutated(3, mid="3002")), "3 (mid 3002)", "post_id", "duplicate")


@pytest.mark.parametrize("content", [[], {"mid": "1"}])
def test_empty_event_or_not_an_array(tmp_path: Path, content: Any) -> None:
    _expect(_write(tmp_path, content), "top level", "(array)")


def test_source_without_any_text(tmp_path: Path) -> None:
    path = _write(tmp_path, _mutated(0, text="", original_text=None))
    _expect(path, "0 (mid 3001)", "text", "topic")


def test_no_event_files(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no event files"):
        load_rumdect(tmp_path)
    with pytest.raises(DataError, match="no such file"):
        load_rumdect(tmp_path / "absent")
