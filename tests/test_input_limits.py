"""Input a user would expect refused or read (issue 41, point 6): a post of megabytes, a
UTF-8 byte-order mark, an event named in sim.events that has too few replies."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mfray.config import SimConfig
from mfray.data.build import MAX_TEXT_CHARS
from mfray.data.jsonl import load_jsonl
from mfray.data.schema import read_dataset
from mfray.errors import ConfigError, DataError
from mfray.schedule import build_units

FIXTURE = Path(__file__).parent / "fixtures" / "jsonl" / "small.jsonl"


def test_a_post_of_megabytes_is_refused_by_name(tmp_path: Path) -> None:
    lines = FIXTURE.read_text(encoding="utf-8").splitlines()
    recs = [json.loads(x) for x in lines if x.startswith("{")]
    post = next(i for i, r in enumerate(recs) if r.get("type", "post") == "post"
                and "text" in r)
    recs[post]["text"] = "x" * (MAX_TEXT_CHARS + 1)
    big = tmp_path / "big.jsonl"
    big.write_text("\n".join(json.dumps(r) for r in recs) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"text of 100,001 characters, more than the 100,000"):
        load_jsonl(big)


def test_a_byte_order_mark_is_read(tmp_path: Path) -> None:
    marked = tmp_path / "bom.jsonl"
    marked.write_bytes(b"\xef\xbb\xbf" + FIXTURE.read_bytes())
    with_bom, plain = load_jsonl(marked), load_jsonl(FIXTURE)
    assert with_bom.posts.equals(plain.posts) and with_bom.events.equals(plain.events)


def test_a_named_event_with_too_few_replies_is_refused(small_world_dir: Path) -> None:
    ds = read_dataset(small_world_dir)
    event = ds.event_ids()[0]
    with pytest.raises(ConfigError, match=rf"sim.events names {event}, which has \d+ replies: "
                                          r"fewer than 100000 \(sim.min_replies\)"):
        build_units(ds, SimConfig(data="x", events=(event,), min_replies=100_000))
    assert build_units(ds, SimConfig(data="x", min_replies=0))  # unnamed: the rule applies
