"""Topic rules: the typical source post, hand-computed, and the rule applied to datasets."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest

from mfray.cli import main
from mfray.data.jsonl import load_jsonl
from mfray.data.topics import EARLIEST, TYPICAL, choose_topic, retopic, typical_index, words
from mfray.errors import MfrayError
from tests.conftest import FIXTURES, require_real_data


def test_words_drop_urls_mentions_hashes_and_stop_words() -> None:
    assert words("BREAKING: the #Dam has burst @reporter http://t.co/x") == {
        "breaking", "dam", "burst"}


def test_typical_index_by_hand() -> None:
    # word sets {cat, dog}, {cat, fish}, {cat, dog}; counts of the others for the first:
    # cat 2, dog 1, fish 1 -> dot 3 / (sqrt 2 * sqrt 6) = 0.866; for the second: cat 2, dog 2 ->
    # 2 / (sqrt 2 * sqrt 8) = 0.5. The first and third tie; the earlier wins.
    assert typical_index(["cat dog", "cat fish", "cat dog"]) == 0
    assert typical_index(["cat fish", "cat dog", "cat dog"]) == 1
    assert typical_index(["only one"]) == 0
    with pytest.raises(ValueError):
        typical_index([])


def test_choose_topic_prefers_the_headline_over_the_first_eyewitness() -> None:
    texts = ["Only photo I will tweet. CPR on the soldier now. I heard four shots.",
             "Soldier shot at war memorial in Ottawa http://t.co/abc",
             "Shots fired at the war memorial in Ottawa, soldier shot",
             "Ottawa: gunman at war memorial, soldier shot"]
    assert choose_topic(texts, EARLIEST) == texts[0]
    # URLs are removed from the chosen text
    assert choose_topic(texts, TYPICAL) == "Soldier shot at war memorial in Ottawa"
    # a source with nothing but a URL is never the topic
    assert choose_topic(["http://t.co/x", "Dam burst"], EARLIEST) == "Dam burst"
    with pytest.raises(MfrayError, match="unknown topic rule"):
        choose_topic(texts, "newest")


def test_retopic_keeps_given_topics_and_rederives_derived_ones() -> None:
    # the fixture's "dam" event gives its topic, "fog" does not
    ds = load_jsonl(FIXTURES / "jsonl" / "small.jsonl")
    before = {e["event_id"]: e for e in ds.events.to_pylist()}
    derived = [eid for eid, e in before.items() if e["topic_origin"] == EARLIEST]
    assert derived, "the fixture should have an event with a derived topic"
    after = {e["event_id"]: e for e in retopic(ds, TYPICAL).events.to_pylist()}
    assert after["dam"] == before["dam"]  # given: untouched
    sources = {eid: [p["text"] for p in ds.posts.to_pylist()
                     if p["event_id"] == eid and p["parent_id"] is None] for eid in derived}
    for eid in derived:
        assert after[eid]["topic_origin"] == TYPICAL
        assert after[eid]["topic"] == choose_topic(sources[eid], TYPICAL)
    with pytest.raises(MfrayError, match="unknown topic rule"):
        retopic(ds, "newest")


def test_convert_with_the_typical_rule(tmp_path: Path) -> None:
    out = tmp_path / "ds"
    assert main(["data", "convert", str(FIXTURES / "rumoureval" / "traindev2017"),
                 "--format", "rumoureval", "--out", str(out),
                 "--topic-rule", TYPICAL]) == 0
    events = pq.read_table(out / "events.parquet").to_pylist()
    posts = pq.read_table(out / "posts.parquet").to_pylist()
    for e in events:
        assert e["topic_origin"] == TYPICAL
        sources = [p["text"] for p in posts if p["event_id"] == e["event_id"]
                   and p["parent_id"] is None]
        assert e["topic"] == choose_topic(sources, TYPICAL)


def test_real_ottawashooting_topic_is_a_headline(tmp_path: Path) -> None:
    real = require_real_data()
    out = tmp_path / "ds"
    main(["data", "convert", str(real), "--format", "rumoureval", "--out", str(out),
          "--topic-rule", TYPICAL])
    topics = {e["event_id"]: e["topic"] for e in pq.read_table(out / "events.parquet").to_pylist()}
    # the earliest source post is an eyewitness tweet ("Only photo I will tweet. CPR being
    # performed on the soldier now..."); the typical one names what happened and where
    assert "CPR" not in topics["ottawashooting"]
    assert "Parliament" in topics["ottawashooting"] and "War Memorial" in topics["ottawashooting"]


def test_retopic_keeps_a_topic_it_cannot_derive(tmp_path: Path) -> None:
    # the only source post is a bare URL: the loader takes it as it is, the rule has nothing
    lines = ['{"type": "dataset", "name": "u", "label_space": {"stance": ["support", "deny"]}}',
             '{"type": "event", "event_id": "e"}',
             ('{"type": "post", "event_id": "e", "thread_id": "t", "post_id": "p", '
              '"time": "2016-01-01T00:00:00Z", "text": "http://t.co/x"}')]
    (tmp_path / "u.jsonl").write_text("\n".join(lines) + "\n")
    ds = load_jsonl(tmp_path / "u.jsonl")
    assert retopic(ds, TYPICAL).events.to_pylist() == ds.events.to_pylist()
