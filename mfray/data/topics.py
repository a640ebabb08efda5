"""Topic rules: which text of an event stands for its topic in every prompt.

Datasets without topic text (RumourEval, JSONL without ``topic``) derive it from the event's
source posts. Two rules exist:

- ``earliest-source-post`` (the loaders' default): the text of the earliest source post. On
  breaking news this is often an eyewitness's first tweet ("Only photo I will tweet. CPR being
  performed on the soldier now…") rather than a statement of what happened.
- ``typical-source-post``: the source post whose words the event's other source posts share most
  (cosine similarity between its word set and the summed word sets of the others, URLs, mentions
  and a short stop-word list left out; ties go to the earliest). It reads from the whole event, as
  the simulator does when it replays every thread, and it needs no hand-written text.

:func:`retopic` applies a rule to a converted dataset; topics that were given keep their text.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING

from mfray.errors import MfrayError

if TYPE_CHECKING:
    from mfray.data.schema import Dataset

EARLIEST = "earliest-source-post"
TYPICAL = "typical-source-post"
RULES = (EARLIEST, TYPICAL)

_URL = re.compile(r"(?:https?://|www\.)\S+", re.IGNORECASE)
_WORD = re.compile(r"[@#]?[^\W_]+")
_STOP = frozenset({
    "a", "an", "and", "are", "as", "at", "be", "been", "but", "by", "for", "from", "has", "have",
    "he", "her", "his", "i", "in", "is", "it", "its", "me", "my", "no", "not", "of", "on", "or",
    "our", "rt", "she", "so", "that", "the", "their", "them", "they", "this", "to", "was", "we",
    "were", "what", "when", "who", "will", "with", "you", "your", "via", "just", "now",
})


def clean(text: str) -> str:
    """A post's text as a topic: URLs removed, whitespace collapsed."""
    return " ".join(_URL.sub(" ", text).split())


def words(text: str) -> frozenset[str]:
    """The content words of a post: lower case, ``#`` dropped, mentions, URLs and stop words out."""
    found = (w.lower() for w in _WORD.findall(_URL.sub(" ", text)))
    return frozenset(w.lstrip("#") for w in found if not w.startswith("@")) - _STOP


def typical_index(texts: Sequence[str]) -> int:
    """Index of the text closest to the others (first of the best on ties; 0 for one text).

    Each text's word set is compared, by cosine similarity, with the word counts of all the other
    texts together. :func:`choose_topic` passes only texts with something left once URLs go.
    """
    if not texts:
        raise ValueError("no texts to choose a topic from")
    sets = [words(t) for t in texts]
    total = Counter(w for s in sets for w in s)
    best, best_score = 0, -1.0
    for i, s in enumerate(sets):
        others = total - Counter(s)
        dot = sum(others[w] for w in s)
        norm = math.sqrt(len(s)) * math.sqrt(sum(c * c for c in others.values()))
        score = dot / norm if norm else 0.0
        if score > best_score:
            best, best_score = i, score
    return best


def _check(rule: str) -> None:
    if rule not in RULES:
        raise MfrayError(f"unknown topic rule {rule!r}: use one of {', '.join(RULES)}")


def choose_topic(source_texts: Sequence[str], rule: str) -> str:
    """The topic of an event whose source posts (in time order) have these texts."""
    _check(rule)
    usable = [t for t in source_texts if clean(t)]
    if not usable:
        raise ValueError("no source post with text to derive a topic from")
    return clean(usable[0] if rule == EARLIEST else usable[typical_index(usable)])


def retopic(ds: Dataset, rule: str) -> Dataset:
    """The dataset with every derived topic re-derived by ``rule`` (given topics are kept).

    Source posts are the posts without a parent, in the posts table's order (time, then id).
    Only topics derived by a rule of this module change: given topics and the ``source-post``
    topics of Weibo events (one source post each) stay as they are, and so does the topic of an
    event none of whose source posts has text left once URLs are removed.
    """
    import pyarrow as pa

    _check(rule)
    posts = ds.posts.select(["event_id", "parent_id", "text"]).to_pylist()
    sources: dict[str, list[str]] = {}
    for p in posts:
        if p["parent_id"] is None:
            sources.setdefault(p["event_id"], []).append(p["text"])
    events = ds.events.to_pylist()
    for e in events:
        texts = sources.get(e["event_id"], [])
        if e["topic_origin"] in RULES and any(clean(t) for t in texts):
            e["topic"] = choose_topic(texts, rule)
            e["topic_origin"] = rule
    table = pa.Table.from_pylist(events, schema=ds.events.schema)
    return dataclasses.replace(ds, events=table)
