"""mfray's generic input format: one JSON Lines file per dataset.

Any dataset that has no loader of its own enters mfray through this format
(``mfray data convert --format jsonl FILE``). One JSON object per line, UTF-8; blank lines are
skipped. Three record types, told apart by ``type``:

**Line 1, the header** (exactly once, first)::

    {"type": "dataset", "name": "my-data",
     "label_space": {"stance": ["support", "deny", "query", "comment"]},
     "notes": {"licence": "CC BY 4.0"}}

``label_space`` maps each action dimension to its options, in a fixed order (at least one
dimension; options unique). ``notes`` is an optional free object kept with the dataset.

**Events**, one per discussion, before or after their posts::

    {"type": "event", "event_id": "e1", "topic": "A dam has burst upstream",
     "split": "train", "metadata": {"veracity": "false"}}

Only ``event_id`` is required. Without ``topic`` (or with ``null``) the topic is the text of the
event's earliest source post and ``topic_origin`` reads ``"earliest-source-post"``; a given topic
has ``topic_origin`` ``"given"`` unless the record names one. ``source`` (the dataset family that
chooses the persona template, default ``"jsonl"``), ``split`` and ``metadata`` (an object) are
optional.

**Posts**, in any order (mfray sorts each event by time, ties by id)::

    {"type": "post", "event_id": "e1", "thread_id": "t1", "post_id": "p2", "parent_id": "p1",
     "time": "2016-05-01T12:00:03Z", "user_id": "u7", "text": "Is this confirmed?",
     "profile": {"location": "Leeds", "followers_count": 120, "verified": false},
     "labels": {"stance": "query"}}

Required: ``event_id``, ``thread_id``, ``post_id``, ``time`` (ISO 8601, or Unix seconds as a
number) and ``text`` (may be empty, e.g. a plain repost). ``parent_id`` is ``null`` or absent for
a thread's source post (exactly one per thread), otherwise the id of the post replied to.
``profile`` keys (all optional; a missing one is unknown, never a default): ``screen_name``,
``name``, ``description``, ``location``, ``gender`` (``"m"``/``"f"``), ``verified``,
``followers_count``, ``friends_count``, ``statuses_count``, ``favourites_count``,
``bi_followers_count``, ``created_at`` (a time). ``labels`` gives each post at most one option
per declared dimension (``null`` or absent: unlabelled).

Every event needs at least one post; a reply may not be older than its parent. Unknown keys,
unknown record types, broken JSON, wrong types and undeclared labels are errors that name the
file, the line and the field. :func:`write_jsonl` writes any converted dataset in this format.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from mfray.data.build import build_dataset, id_key, to_utc
from mfray.data.schema import PROFILE_FIELDS, Dataset
from mfray.errors import DataError

DEFAULT_SOURCE = "jsonl"
TOPIC_GIVEN = "given"
TOPIC_DERIVED = "earliest-source-post"

_HEADER_KEYS = {"type", "name", "label_space", "notes"}
_EVENT_KEYS = {"type", "event_id", "topic", "topic_origin", "source", "split", "metadata"}
_POST_REQUIRED = ("event_id", "thread_id", "post_id", "time", "text")
_POST_KEYS = {"type", *_POST_REQUIRED, "parent_id", "user_id", "profile", "labels"}


def load_jsonl(path: str | os.PathLike[str]) -> Dataset:
    """Read a dataset in mfray's JSON Lines format (see the module docstring).

    Raises :class:`DataError` naming the file, the line (``line N``) and the field at fault.
    """
    file = str(path)
    header: dict[str, Any] | None = None
    events: dict[str, dict[str, Any]] = {}
    posts: list[dict[str, Any]] = []
    try:
        with open(path, encoding="utf-8-sig") as fh:
            for n, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                rec = _parse_line(line, file, n)
                where = {"file": file, "record": f"line {n}"}
                kind = rec.get("type")
                if header is None:
                    if kind != "dataset":
                        raise DataError("the first record must be the dataset header "
                                        '{"type": "dataset", ...}', **where, field="type")
                    header = _header(rec, where)
                elif kind == "event":
                    event = _event(rec, where)
                    if event["event_id"] in events:
                        raise DataError("duplicate event id", **where, field="event_id")
                    events[event["event_id"]] = event
                elif kind == "post":
                    posts.append(_post(rec, where))
                else:
                    raise DataError(f"unknown record type {kind!r} (expected 'event' or "
                                    "'post'; the header comes once, first)", **where,
                                    field="type")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read the file ({exc})", file=file) from None
    if header is None:
        raise DataError("empty file: no dataset header", file=file, record="line 1",
                        field="type")
    with_posts = {p["event_id"] for p in posts}
    for e in events.values():  # checked here too, so that the error names the event's line
        if e["event_id"] not in with_posts:
            raise DataError("event has no posts", file=file, record=e["_record"], field="posts")
    _derive_topics(events, posts)
    return build_dataset(header["name"], header["label_space"], events.values(), posts,
                         notes=header["notes"])


def _parse_line(line: str, file: str, n: int) -> dict[str, Any]:
    try:
        rec = json.loads(line)
    except json.JSONDecodeError as exc:
        raise DataError(f"broken JSON: {exc.msg} at column {exc.colno}", file=file,
                        record=f"line {n}", field="(syntax)") from None
    except RecursionError:
        raise DataError("JSON nested too deeply", file=file, record=f"line {n}",
                        field="(syntax)") from None
    except ValueError as exc:  # e.g. an integer of more than 4,300 digits
        raise DataError(f"unreadable JSON ({exc})", file=file, record=f"line {n}",
                        field="(syntax)") from None
    if not isinstance(rec, dict):
        raise DataError(f"expected a JSON object, got {type(rec).__name__}", file=file,
                        record=f"line {n}", field="(record)")
    return rec


def _check_keys(rec: Mapping[str, Any], allowed: set[str], where: dict[str, str]) -> None:
    unknown = sorted(set(rec) - allowed)
    if unknown:  # a typo (e.g. "parent") would otherwise be dropped silently
        raise DataError(f"unknown key (allowed: {sorted(allowed)})", **where, field=unknown[0])


def _opt(rec: Mapping[str, Any], key: str, kind: type, where: dict[str, str]) -> Any:
    """An optional field of the given JSON type (None when absent or null)."""
    value = rec.get(key)
    if value is None:
        return None
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise DataError(f"expected {kind.__name__}, got {type(value).__name__}", **where,
                        field=key)
    return value


def _header(rec: Mapping[str, Any], where: dict[str, str]) -> dict[str, Any]:
    _check_keys(rec, _HEADER_KEYS, where)
    name = _opt(rec, "name", str, where)
    if not name:
        raise DataError("required field is missing", **where, field="name")
    space = _opt(rec, "label_space", dict, where)
    if not space:
        raise DataError("declare at least one action dimension, e.g. "
                        '{"stance": ["support", "deny"]}', **where, field="label_space")
    for dim, options in space.items():
        field = f"label_space.{dim}"
        if not isinstance(options, list) or not options:
            raise DataError("expected a non-empty list of options", **where, field=field)
        if not all(isinstance(o, str) and o for o in options) or len(set(options)) < len(options):
            raise DataError("options must be unique non-empty strings", **where, field=field)
    notes = _opt(rec, "notes", dict, where)
    return {"name": name, "label_space": space, "notes": notes or {}}


def _event(rec: Mapping[str, Any], where: dict[str, str]) -> dict[str, Any]:
    _check_keys(rec, _EVENT_KEYS, where)
    event_id = _opt(rec, "event_id", str, where)
    if not event_id:
        raise DataError("required field is missing", **where, field="event_id")
    topic = _opt(rec, "topic", str, where)
    if topic is not None and not topic.strip():
        raise DataError("empty topic: give text or leave it out to derive it", **where,
                        field="topic")
    metadata = _opt(rec, "metadata", dict, where)
    return {
        "_file": where["file"], "_record": where["record"], "event_id": event_id,
        "topic": topic,
        "topic_origin": _opt(rec, "topic_origin", str, where)
        or (TOPIC_GIVEN if topic is not None else TOPIC_DERIVED),
        "source": _opt(rec, "source", str, where) or DEFAULT_SOURCE,
        "split": _opt(rec, "split", str, where),
        "metadata": None if metadata is None else json.dumps(metadata),
    }


def _post(rec: Mapping[str, Any], where: dict[str, str]) -> dict[str, Any]:
    _check_keys(rec, _POST_KEYS, where)
    for key in _POST_REQUIRED:
        if rec.get(key) is None:
            raise DataError("required field is missing", **where, field=key)
    # checked here too (build_dataset checks again): grouping and topics read these fields
    for key in ("event_id", "thread_id", "post_id", "parent_id", "user_id", "text"):
        _opt(rec, key, str, where)
    profile = _opt(rec, "profile", dict, where)
    unknown = sorted(set(profile or {}) - set(PROFILE_FIELDS))
    if unknown:
        raise DataError(f"unknown profile key (allowed: {list(PROFILE_FIELDS)})", **where,
                        field=f"profile.{unknown[0]}")
    _opt(rec, "labels", dict, where)
    # time, profile values and labels are checked by build_dataset
    return {"_file": where["file"], "_record": where["record"],
            **{k: v for k, v in rec.items() if k != "type"}}


def _derive_topics(events: dict[str, dict[str, Any]], posts: list[dict[str, Any]]) -> None:
    """Give each event without a topic the text of its earliest source post (ties by id)."""
    missing = {eid for eid, e in events.items() if e["topic"] is None}
    best: dict[str, tuple[datetime, tuple[int, int, str], str]] = {}
    for p in posts:
        eid = p["event_id"]
        if eid in missing and p.get("parent_id") is None:
            t = to_utc(p["time"], file=p["_file"], record=p["_record"], field_name="time")
            key = (t, id_key(str(p["post_id"])), p["text"])
            if eid not in best or key[:2] < best[eid][:2]:
                best[eid] = key
    for eid in missing:
        e = events[eid]
        found = best.get(eid)
        if found is None or not found[2].strip():
            raise DataError("no topic given and no source post with text to derive it from",
                            file=e["_file"], record=e["_record"], field="topic")
        e["topic"] = found[2]


def write_jsonl(ds: Dataset, path: str | os.PathLike[str]) -> Path:
    """Write ``ds`` in mfray's JSON Lines format, so that :func:`load_jsonl` reads it back to the
    same tables. The file is written under a temporary name and renamed into place."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.tmp-", dir=out.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            header = {"type": "dataset", "name": ds.name,
                      "label_space": {d: list(o) for d, o in ds.label_space.items()},
                      "notes": ds.notes}
            fh.write(json.dumps(header, ensure_ascii=False, default=str) + "\n")
            for e in ds.events.to_pylist():
                meta = None if e["metadata"] is None else json.loads(e["metadata"])
                fh.write(_line({"type": "event", **e, "metadata": meta}))
            for p in ds.posts.to_pylist():
                rec = {"type": "post", **{k: p[k] for k in _POST_KEYS - {"type"}}}
                rec["time"] = _iso(p["time"])
                rec["labels"] = {d: v for d, v in p["labels"].items() if v is not None}
                if p["profile"] is not None:
                    rec["profile"] = {k: v for k, v in p["profile"].items() if v is not None}
                    if "created_at" in rec["profile"]:
                        rec["profile"]["created_at"] = _iso(rec["profile"]["created_at"])
                fh.write(_line(rec))
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out


def _line(rec: dict[str, Any]) -> str:
    # keys in a fixed order so that files diff well; None values omitted to keep lines short
    order = ["type", "event_id", "thread_id", "post_id", "parent_id", "time", "user_id",
             "topic", "topic_origin", "source", "split", "metadata", "text", "profile", "labels"]
    ordered = {k: rec[k] for k in order if rec.get(k) is not None}
    return json.dumps(ordered, ensure_ascii=False) + "\n"


def _iso(t: datetime) -> str:
    return t.isoformat(timespec="milliseconds").replace("+00:00", "Z")
