"""Profile fields -> persona text, the agent state ``s_i`` of ``method.md`` §1.

A persona is one short line of ``key: value`` pairs joined by ``"; "`` (it goes into every
prompt, so it stays short): location, gender, verified, followers, following, activity, the year
the account was created, and the self-description last (it is the longest; cut to
:data:`DESCRIPTION_MAX_CHARS`). Counts are shown as buckets, not numbers: the exact count carries
no more signal for a model and costs tokens. A field the profile lacks reads ``"unknown"``,
never a concrete default; a blank string counts as lacking (a user who left the location empty
tells us nothing about where they are).

One function per platform family, since platforms expose different fields (Twitter has no gender,
Reddit has no follower counts), and :func:`persona_for` to choose by the event's ``source``.
All functions are pure and deterministic.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Mapping
from typing import Any

from mfray.data.build import to_utc

UNKNOWN = "unknown"
DESCRIPTION_MAX_CHARS = 120
LOCATION_MAX_CHARS = 40
ELLIPSIS = "…"

#: (exclusive upper bound, label): a count below the first bound gets the first label, etc.
FOLLOWER_BUCKETS: tuple[tuple[float, str], ...] = (
    (100, "fewer than 100"),
    (1_000, "hundreds"),
    (10_000, "thousands"),
    (100_000, "tens of thousands"),
    (1_000_000, "hundreds of thousands"),
    (math.inf, "millions"),
)
#: accounts followed: platforms cap it (Weibo 2,000, Twitter 5,000 for most), so fewer buckets
FRIEND_BUCKETS: tuple[tuple[float, str], ...] = (
    (100, "fewer than 100"),
    (1_000, "hundreds"),
    (math.inf, "thousands"),
)
#: lifetime posts (statuses_count)
ACTIVITY_BUCKETS: tuple[tuple[float, str], ...] = (
    (100, "low (fewer than 100 posts)"),
    (1_000, "moderate (hundreds of posts)"),
    (10_000, "high (thousands of posts)"),
    (math.inf, "very high (10,000+ posts)"),
)
GENDERS = {"m": "male", "f": "female"}

Profile = Mapping[str, Any] | None


def bucket(value: int | None, buckets: tuple[tuple[float, str], ...]) -> str:
    """The label of the first bucket whose upper bound exceeds ``value``; ``unknown`` for None."""
    if value is None:
        return UNKNOWN
    bounds = [b for b, _ in buckets]
    return buckets[min(bisect.bisect_right(bounds, value), len(buckets) - 1)][1]


def clip(text: Any, max_chars: int) -> str:
    """One line of at most ``max_chars`` characters (whitespace collapsed, cut with an
    ellipsis); ``unknown`` for a missing or blank value."""
    if text is None:
        return UNKNOWN
    flat = " ".join(str(text).split())
    if not flat:
        return UNKNOWN
    return flat if len(flat) <= max_chars else flat[: max_chars - 1] + ELLIPSIS


def _get(profile: Profile, key: str) -> Any:
    return None if profile is None else profile.get(key)


def _verified(profile: Profile) -> str:
    value = _get(profile, "verified")
    return UNKNOWN if value is None else ("yes" if value else "no")


def _joined(profile: Profile) -> str:
    value = _get(profile, "created_at")
    if value is None:
        return UNKNOWN
    # the UTC year, whatever form the time comes in (datetime, Unix seconds, ISO 8601)
    return str(to_utc(value, file=None, record=None, field_name="profile.created_at").year)


# one renderer per persona key, in the order they appear in the text
_FIELDS: dict[str, Callable[[Profile], str]] = {
    "location": lambda p: clip(_get(p, "location"), LOCATION_MAX_CHARS),
    "gender": lambda p: GENDERS.get(_get(p, "gender"), UNKNOWN),
    "verified": _verified,
    "followers": lambda p: bucket(_get(p, "followers_count"), FOLLOWER_BUCKETS),
    "following": lambda p: bucket(_get(p, "friends_count"), FRIEND_BUCKETS),
    "activity": lambda p: bucket(_get(p, "statuses_count"), ACTIVITY_BUCKETS),
    "joined": _joined,
    "bio": lambda p: clip(_get(p, "description"), DESCRIPTION_MAX_CHARS),
}


def _render(profile: Profile, keys: tuple[str, ...]) -> str:
    return "; ".join(f"{k}: {_FIELDS[k](profile)}" for k in keys)


TWITTER_KEYS = ("location", "verified", "followers", "following", "activity", "joined", "bio")
WEIBO_KEYS = ("location", "gender", "verified", "followers", "following", "activity", "joined",
              "bio")
REDDIT_KEYS = ("joined", "bio")
GENERIC_KEYS = WEIBO_KEYS


def twitter_persona(profile: Profile) -> str:
    """Twitter (PHEME / RumourEval): every field but gender, which Twitter does not expose."""
    return _render(profile, TWITTER_KEYS)


def weibo_persona(profile: Profile) -> str:
    """Weibo (rumdect): all fields, gender included."""
    return _render(profile, WEIBO_KEYS)


def reddit_persona(profile: Profile) -> str:
    """Reddit (RumourEval 2019): account year and description only; Reddit has no followers,
    verification or location."""
    return _render(profile, REDDIT_KEYS)


def generic_persona(profile: Profile) -> str:
    """Any other source (synthetic worlds, JSONL datasets): all fields, each "unknown" where
    the profile lacks it."""
    return _render(profile, GENERIC_KEYS)


#: event ``source`` -> persona function; sources not listed get :func:`generic_persona`
PERSONA_BY_SOURCE: dict[str, Callable[[Profile], str]] = {
    "pheme": twitter_persona,
    "twitter": twitter_persona,
    "rumdect": weibo_persona,
    "weibo": weibo_persona,
    "reddit": reddit_persona,
}


def persona_for(source: str, profile: Profile) -> str:
    """The persona of a post's author, chosen by its event's ``source``.

    ``rumoureval`` mixes Twitter and Reddit threads: a profile with neither a followers nor a
    friends count is a Reddit author (Twitter always reports both), otherwise Twitter.
    """
    if source == "rumoureval":
        no_counts = _get(profile, "followers_count") is None and _get(
            profile, "friends_count") is None
        return reddit_persona(profile) if no_counts else twitter_persona(profile)
    return PERSONA_BY_SOURCE.get(source, generic_persona)(profile)
