"""Persona text: bucket edges, truncation, unknown fields, choice by source."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from pathlib import Path

import pytest

from mfray import persona as P

ALL_BUCKETS = {
    "FOLLOWER_BUCKETS": P.FOLLOWER_BUCKETS,
    "FRIEND_BUCKETS": P.FRIEND_BUCKETS,
    "ACTIVITY_BUCKETS": P.ACTIVITY_BUCKETS,
}
EDGES = [
    (name, i, int(bound))
    for name, buckets in ALL_BUCKETS.items()
    for i, (bound, _) in enumerate(buckets)
    if not math.isinf(bound)
]


@pytest.mark.parametrize(("name", "i", "bound"), EDGES)
def test_bucket_edges(name: str, i: int, bound: int) -> None:
    buckets = ALL_BUCKETS[name]
    assert P.bucket(bound - 1, buckets) == buckets[i][1]
    assert P.bucket(bound, buckets) == buckets[i + 1][1]


def test_bucket_ends_and_unknown() -> None:
    assert P.bucket(0, P.FOLLOWER_BUCKETS) == "fewer than 100"
    assert P.bucket(10**12, P.FOLLOWER_BUCKETS) == "millions"
    assert P.bucket(None, P.FOLLOWER_BUCKETS) == "unknown"
    assert [b for b, _ in P.FOLLOWER_BUCKETS] == sorted(b for b, _ in P.FOLLOWER_BUCKETS)


def test_description_truncated_exactly_at_max() -> None:
    n = P.DESCRIPTION_MAX_CHARS
    exact = "x" * n
    assert P.weibo_persona({"description": exact}).endswith(f"bio: {exact}")
    cut = P.weibo_persona({"description": "y" * (n + 1)}).split("bio: ")[1]
    assert len(cut) == n and cut == "y" * (n - 1) + P.ELLIPSIS


def test_whitespace_collapsed_and_blank_is_unknown() -> None:
    text = P.twitter_persona({"description": "line one\n\n  line two", "location": "   "})
    assert "bio: line one line two" in text
    assert "location: unknown" in text
    assert "\n" not in text


def test_full_weibo_persona() -> None:
    profile = {
        "location": "北京 海淀区", "gender": "f", "verified": True, "followers_count": 5000,
        "friends_count": 300, "statuses_count": 12000, "description": "本地新闻",
        "created_at": datetime(2011, 3, 13, tzinfo=UTC), "screen_name": "not shown",
    }
    assert P.weibo_persona(profile) == (
        "location: 北京 海淀区; gender: female; verified: yes; followers: thousands; "
        "following: hundreds; activity: very high (10,000+ posts); joined: 2011; bio: 本地新闻"
    )


@pytest.mark.parametrize("profile", [None, {}, {"gender": "n", "verified": None}])
def test_missing_fields_read_unknown(profile: dict | None) -> None:
    text = P.weibo_persona(profile)
    values = [pair.split(": ", 1)[1] for pair in text.split("; ")]
    assert values == ["unknown"] * len(P.WEIBO_KEYS)


def test_false_and_zero_are_known_values() -> None:
    text = P.twitter_persona({"verified": False, "followers_count": 0, "friends_count": 0})
    assert "verified: no" in text
    assert "followers: fewer than 100" in text and "following: fewer than 100" in text


def test_joined_is_the_utc_year_of_any_time_form() -> None:
    assert "joined: 2010" in P.twitter_persona({"created_at": 1284872418})
    # 23:00 at UTC-5 is already the next year in UTC
    assert "joined: 2010" in P.twitter_persona({"created_at": "2009-12-31T23:00:00-05:00"})
    assert "joined: 2009" in P.twitter_persona({"created_at": "Thu Dec 31 20:00:00 +0000 2009"})


def test_platform_fields() -> None:
    profile = {"gender": "m", "followers_count": 10, "description": "d"}
    assert "gender" not in P.twitter_persona(profile)
    assert "gender: male" in P.weibo_persona(profile)
    assert P.reddit_persona(profile) == "joined: unknown; bio: d"
    assert P.generic_persona(profile) == P.weibo_persona(profile)


def test_persona_for_chooses_by_source() -> None:
    tw = {"followers_count": 5, "friends_count": 7, "gender": "f"}
    reddit = {"description": "r"}
    assert P.persona_for("rumoureval", tw) == P.twitter_persona(tw)
    assert P.persona_for("rumoureval", reddit) == P.reddit_persona(reddit)
    assert P.persona_for("rumoureval", None) == P.reddit_persona(None)
    assert P.persona_for("rumdect", tw) == P.weibo_persona(tw)
    assert P.persona_for("synthetic", tw) == P.generic_persona(tw)
    assert P.persona_for("jsonl", tw) == P.generic_persona(tw)
    assert P.persona_for("something-else", tw) == P.generic_persona(tw)


REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "rumoureval2017-dev"


@pytest.mark.real_data
def test_real_profiles_give_short_complete_personas() -> None:
    if not REAL.is_dir():
        pytest.skip(f"real data not found at {REAL}")
    from mfray.data.rumoureval import load_rumoureval

    ds = load_rumoureval(REAL)
    source = dict(zip(ds.events["event_id"].to_pylist(), ds.events["source"].to_pylist(),
                      strict=True))
    rows = ds.posts.select(["event_id", "profile"]).to_pylist()
    texts = [P.persona_for(source[r["event_id"]], r["profile"]) for r in rows]
    keys = ", ".join(P.TWITTER_KEYS)
    longest = len(keys) + 6 * len(P.TWITTER_KEYS) + P.DESCRIPTION_MAX_CHARS + 150
    assert all(len(t) <= longest for t in texts)
    assert not any(": None" in t or "\n" in t for t in texts)
    assert all(t.startswith("location: ") for t in texts)  # Twitter threads only here
