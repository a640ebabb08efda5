"""Tests of the RumourEval / PHEME loader on hand-written fixtures of each release layout, on
malformed input, and (when ../shared/data is present) on the real 2017 train/dev release."""

from __future__ import annotations

import json
import shutil
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from mfray.cli.data import left_out
from mfray.data.rumoureval import load_rumoureval
from mfray.data.schema import STANCE_OPTIONS, Dataset, dataset_info
from mfray.errors import DataError

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "rumoureval"
REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "rumoureval2017-dev"


def _posts(ds: Dataset) -> dict[str, dict[str, Any]]:
    return {p["post_id"]: p for p in ds.posts.to_pylist()}


def _event(ds: Dataset, event_id: str) -> dict[str, Any]:
    row = next(e for e in ds.events.to_pylist() if e["event_id"] == event_id)
    return {**row, "metadata": json.loads(row["metadata"])}


def _order(ds: Dataset, event_id: str) -> list[str]:
    return [p["post_id"] for p in ds.posts_of(event_id).to_pylist()]


# --------------------------------------------------------------------------------------------
# the four layouts


def test_2017_traindev_layout() -> None:
    ds = load_rumoureval(FIXTURES / "traindev2017")
    assert ds.name == "rumoureval" and ds.label_space == {"stance": STANCE_OPTIONS}
    assert ds.event_ids() == ["eventa", "eventb"]
    assert ds.posts.num_rows == 10
    a, b = _event(ds, "eventa"), _event(ds, "eventb")
    assert (a["split"], b["split"]) == ("train", "dev")
    assert a["metadata"] == {"layout": "2017-traindev", "platform": "twitter",
                             "veracity": {"100": "true", "200": "unverified"}}
    assert b["metadata"]["veracity"] == {"300": "false"}
    # the earliest source (200, not 100) gives the topic; its URL and extra spaces are gone
    assert a["topic"] == "Breaking: a bridge has closed in Springfield"
    assert a["topic_origin"] == "earliest-source-post"
    # time order across the event's two threads
    assert _order(ds, "eventa") == ["200", "100", "101", "102", "201", "103", "104", "105"]
    posts = _posts(ds)
    parents = {k: (p["parent_id"], p["context_post_id"], p["thread_id"]) for k, p in posts.items()}
    assert parents["100"] == (None, None, "100")
    assert parents["102"] == ("101", "100", "100")  # in_reply_to_status_id_str
    assert parents["103"] == ("101", "100", "100")  # in_reply_to null -> structure.json
    assert parents["104"] == ("100", "100", "100")  # unknown parent, structure root -> source
    assert parents["105"] == ("102", "100", "100")  # structure parent 998 has no file -> 102
    assert parents["201"] == ("200", "200", "200")
    labels = {k: p["labels"]["stance"] for k, p in posts.items()}
    assert labels == {"100": "support", "101": "support", "102": "deny", "103": None,
                      "104": "query", "105": "comment", "200": "support", "201": "query",
                      "300": "support", "301": "query"}
    assert posts["201"]["text"] == "Is that confirmed? No source yet"  # from full_text
    assert posts["101"]["user_id"] == "9004"
    profile = posts["101"]["profile"]
    assert (profile["screen_name"], profile["verified"], profile["followers_count"],
            profile["friends_count"], profile["statuses_count"],
            profile["favourites_count"]) == ("resident", True, 12, 5, 100, 7)
    assert profile["created_at"].year == 2012 and profile["gender"] is None
    assert posts["105"]["seconds_since_start"] == 480.0


def test_2017_flat_test_layout_is_one_event_named_after_its_folder() -> None:
    ds = load_rumoureval(FIXTURES / "test2017")
    assert ds.event_ids() == ["test2017"]
    event = _event(ds, "test2017")
    assert event["split"] == "test"
    assert event["metadata"]["layout"] == "2017-test"
    assert event["metadata"]["veracity"] == {"400": "false", "500": "true"}
    assert event["topic"] == "Reports: the river flooded"  # 500 is earlier than 400
    assert _order(ds, "test2017") == ["500", "501", "400", "401"]
    posts = _posts(ds)
    assert posts["501"]["labels"]["stance"] is None
    assert posts["401"]["labels"]["stance"] == "deny"
    assert (posts["401"]["parent_id"], posts["401"]["context_post_id"]) == ("400", "400")


def test_2019_key_files_give_splits_and_labels() -> None:
    ds = load_rumoureval(FIXTURES / "twitter2019")
    assert ds.event_ids() == ["eventc", "eventd"]
    assert ds.posts.num_rows == 7
    c, d = _event(ds, "eventc"), _event(ds, "eventd")
    assert c["split"] == "test" and c["metadata"]["layout"] == "2019-twitter"
    assert c["metadata"]["veracity"] == {"600": "true"}
    # eventd's threads come from train-key.json and dev-key.json: no single split
    assert d["split"] is None
    assert d["metadata"]["thread_splits"] == {"700": "train", "800": "dev"}
    assert d["topic"] == "The library is closing for good"
    posts = _posts(ds)
    assert [posts[k]["labels"]["stance"] for k in ("600", "601", "602", "701", "801")] == [
        "support", "query", None, "deny", "comment"]
    assert (posts["602"]["parent_id"], posts["602"]["context_post_id"]) == ("601", "600")
    assert _order(ds, "eventd") == ["700", "701", "800", "801"]


def test_2019_reddit_threads() -> None:
    ds = load_rumoureval(FIXTURES / "reddit2019")
    assert ds.event_ids() == ["reddit-test-data"]
    event = _event(ds, "reddit-test-data")
    assert event["split"] == "test"
    assert event["metadata"] == {"layout": "2019-reddit", "platform": "reddit",
                                 "veracity": {"a1b2c3": "unverified", "x9y8z7": "false"}}
    assert event["topic"] == "Town hall fire rumours"  # the earlier submission, title only
    assert _order(ds, "reddit-test-data") == [
        "x9y8z7", "q1r2s3", "a1b2c3", "d4e5f6", "g7h8i9", "k1l2m3", "n4o5p6"]
    posts = _posts(ds)
    # Listing-wrapped submission: title + selftext; user = author, no follower counts
    assert posts["a1b2c3"]["text"].startswith("Is the old mill being demolished?\n\nHeard")
    assert posts["a1b2c3"]["user_id"] == "millwatcher"
    assert posts["a1b2c3"]["profile"]["screen_name"] == "millwatcher"
    assert posts["a1b2c3"]["profile"]["followers_count"] is None
    assert posts["a1b2c3"]["time"].timestamp() == 1549360000.0
    # t1 wrapper, plain object, deleted comment without body/author, "[deleted]" author
    assert [posts[k]["parent_id"] for k in ("d4e5f6", "g7h8i9", "k1l2m3", "n4o5p6")] == [
        "a1b2c3", "d4e5f6", "g7h8i9", "a1b2c3"]
    assert {posts[k]["context_post_id"] for k in ("d4e5f6", "g7h8i9", "k1l2m3")} == {"a1b2c3"}
    assert (posts["k1l2m3"]["text"], posts["k1l2m3"]["user_id"]) == ("[deleted]", None)
    assert posts["k1l2m3"]["labels"]["stance"] == "comment"
    assert (posts["n4o5p6"]["user_id"], posts["n4o5p6"]["labels"]["stance"]) == (None, None)
    assert posts["q1r2s3"]["labels"]["stance"] == "deny"
    # a Reddit "more" stub (the API's placeholder for comments not sent; the real release
    # keeps 71 as reply files, and its key labels some of them) is skipped and counted
    assert "dqzw3ff" not in posts
    assert ds.notes["reddit_more_stubs_skipped"] == 1
    assert ds.notes["stance_labels_on_skipped_stubs"] == 1
    # a comment deleted by its author and one removed by a moderator are kept and counted
    assert posts["n4o5p6"]["text"] == "[removed]"
    assert ds.notes["posts_deleted_or_removed"] == ds.notes["posts_without_author"] == 2
    assert left_out(ds.notes)[-1] == "kept 2 post(s) without an author (deleted accounts)"


def test_all_layouts_under_one_root(tmp_path: Path) -> None:
    for name in ("traindev2017", "twitter2019", "reddit2019"):
        shutil.copytree(FIXTURES / name, tmp_path / name)
    ds = load_rumoureval(tmp_path)
    # events in the order of their folders' paths
    assert ds.event_ids() == ["reddit-test-data", "eventa", "eventb", "eventc", "eventd"]
    assert ds.posts.num_rows == 10 + 7 + 7
    assert sorted(dataset_info(ds)["labels"]["stance"].items()) == sorted(
        {"support": 9, "deny": 3, "query": 6, "comment": 3, "unlabelled": 3}.items())


# --------------------------------------------------------------------------------------------
# bad input: each error names the file, the record and the field


@pytest.fixture()
def td(tmp_path: Path) -> Path:
    root = tmp_path / "td"
    shutil.copytree(FIXTURES / "traindev2017", root)
    return root


REPLY = Path("rumoureval-data/eventa/100/replies/102.json")


def _edit(root: Path, rel: Path, **changes: Any) -> None:
    path = root / rel
    obj = json.loads(path.read_text())
    for key, value in changes.items():
        if value is ...:
            del obj[key]
        else:
            obj[key] = value
    path.write_text(json.dumps(obj))


def _raises(root: Path, file: str, record: str | None, field: str | None) -> DataError:
    with pytest.raises(DataError) as info:
        load_rumoureval(root)
    err = info.value
    assert err.file is not None and err.file.endswith(file), err
    assert (err.record, err.field) == (record, field), err
    return err


def test_a_deleted_accounts_retweet_of_a_deleted_tweet_is_kept_and_counted(td: Path) -> None:
    _edit(td, REPLY, user=None, retweeted_status=None, text="RT @gone: this tweet is gone")
    ds = load_rumoureval(td)
    post = _posts(ds)["102"]
    assert (post["user_id"], post["text"]) == (None, "RT @gone: this tweet is gone")
    assert ds.notes["posts_without_author"] == 1 and ds.notes["posts_deleted_or_removed"] == 0


def test_broken_json(td: Path) -> None:
    (td / REPLY).write_text('{"id_str": "102", ')
    err = _raises(td, "102.json", "102", "json")
    assert "broken JSON" in str(err)


@pytest.mark.parametrize("key", ["id_str", "created_at", "text"])
def test_reply_missing_required_field(td: Path, key: str) -> None:
    _edit(td, REPLY, **{key: ...})
    _raises(td, "102.json", "102", key)


@pytest.mark.parametrize(("key", "value", "field"), [
    ("id_str", 102, "id_str"),
    ("text", ["not", "text"], "text"),
    ("created_at", "yesterday", "created_at"),
    ("in_reply_to_status_id_str", 101, "in_reply_to_status_id_str"),
    ("user", "someone", "user"),
])
def test_reply_wrong_types(td: Path, key: str, value: Any, field: str) -> None:
    _edit(td, REPLY, **{key: value})
    _raises(td, "102.json", "102", field)


def test_profile_wrong_type(td: Path) -> None:
    path = td / REPLY
    obj = json.loads(path.read_text())
    obj["user"]["followers_count"] = "many"
    path.write_text(json.dumps(obj))
    _raises(td, "102.json", "102", "profile.followers_count")


def test_id_differs_from_file_name(td: Path) -> None:
    _edit(td, REPLY, id_str="109")
    _raises(td, "102.json", "102", "id_str")


def test_unknown_stance_label(td: Path) -> None:
    path = td / "traindev" / "rumoureval-subtaskA-train.json"
    path.write_text(json.dumps({"101": "support", "102": "agree"}))
    err = _raises(td, "rumoureval-subtaskA-train.json", "102", "stance")
    assert "'agree'" in str(err)


def test_unknown_label_in_2019_key_file(tmp_path: Path) -> None:
    root = tmp_path / "tw"
    shutil.copytree(FIXTURES / "twitter2019", root)
    (root / "final-eval-key.json").write_text(json.dumps(
        {"subtaskaenglish": {"600": "support"}, "subtaskbenglish": {"600": "maybe"}}))
    _raises(root, "final-eval-key.json", "600", "subtaskbenglish")


def test_key_file_without_subtasks(tmp_path: Path) -> None:
    root = tmp_path / "tw"
    shutil.copytree(FIXTURES / "twitter2019", root)
    (root / "final-eval-key.json").write_text(json.dumps({"subtaskbdanish": {}}))
    _raises(root, "final-eval-key.json", None, "key")


def test_contradicting_label_files(td: Path) -> None:
    (td / "traindev" / "rumoureval-subtaskA-dev.json").write_text(json.dumps({"102": "query"}))
    err = _raises(td, "rumoureval-subtaskA-train.json", "102", "stance")
    assert "contradicts 'query'" in str(err)


def test_reply_earlier_than_parent(td: Path) -> None:
    _edit(td, REPLY, created_at="Sat Jan 03 10:01:00 +0000 2015")  # parent 101 is at 10:03
    err = _raises(td, "102.json", "102", "time")
    assert "earlier than its parent 101" in str(err)


def test_thread_without_source_tweet(td: Path) -> None:
    (td / "rumoureval-data/eventa/100/source-tweet/100.json").unlink()
    _raises(td, "source-tweet", "100", "source-tweet")


def test_bad_structure(td: Path) -> None:
    (td / "rumoureval-data/eventa/100/structure.json").write_text('{"100": {"101": 5}}')
    _raises(td, "structure.json", "101", "structure")


def test_reddit_reply_without_time(tmp_path: Path) -> None:
    root = tmp_path / "rd"
    shutil.copytree(FIXTURES / "reddit2019", root)
    rel = Path("rumoureval-2019-test-data/reddit-test-data/a1b2c3/replies/g7h8i9.json")
    _edit(root, rel, created_utc=...)
    _raises(root, "g7h8i9.json", "g7h8i9", "created_utc")


def test_no_threads(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no RumourEval thread folders"):
        load_rumoureval(tmp_path)


# --------------------------------------------------------------------------------------------
# the real 2017 train/dev release


@pytest.mark.real_data
def test_real_rumoureval2017_dev() -> None:
    if not REAL.is_dir():
        pytest.skip(f"real data not found at {REAL}")
    start = time.perf_counter()
    ds = load_rumoureval(REAL)
    seconds = time.perf_counter() - start
    assert seconds < 20, f"conversion took {seconds:.1f} s"
    info = dataset_info(ds)
    assert (info["events"], info["threads"], info["posts"]) == (8, 317, 5026)
    assert info["labels"]["stance"] == {"support": 960, "deny": 358, "query": 430,
                                        "comment": 3278, "unlabelled": 0}
    replies = {e["event_id"]: e["replies"] for e in info["per_event"]}
    assert replies == {"charliehebdo": 1086, "ebola-essien": 32, "ferguson": 1136,
                       "germanwings-crash": 354, "ottawashooting": 837, "prince-toronto": 91,
                       "putinmissing": 53, "sydneysiege": 1120}
    splits = {e["event_id"]: e["split"] for e in info["per_event"]}
    assert splits["germanwings-crash"] == "dev"
    assert Counter(splits.values()) == {"train": 7, "dev": 1}
    assert sum(len(json.loads(m)["veracity"]) for m in ds.events["metadata"].to_pylist()) == 317
    assert ds.notes["stance_labels_without_post"] == 0
