"""Building a dataset from loader records: every format's records get the same checks and the
same error messages here. :func:`build_dataset` validates them, orders posts by time (ties by id),
derives ``context_post_id`` and ``seconds_since_start`` and builds the canonical tables
(:mod:`mfray.data.schema`).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa

from mfray.data.schema import (
    EVENTS_SCHEMA,
    PROFILE_TYPE,
    REQUIRED_POST_FIELDS,
    Dataset,
    LabelSpace,
    posts_schema,
)
from mfray.errors import DataError


def id_key(post_id: str) -> tuple[int, int, str]:
    """Order ids numerically where they are numbers (tweet ids), else as text. Numbers compare
    by length, then digits: no int() conversion, which refuses ids of more than 4,300 digits."""
    if post_id.isascii() and post_id.isdigit():
        digits = post_id.lstrip("0")
        return (0, len(digits), digits)
    return (1, 0, post_id)


#: the longest post text accepted: a long Reddit submission is 40,000 characters; a post of
#: megabytes is a dump or a broken file, and as a topic it would be in every prompt
MAX_TEXT_CHARS = 100_000


def check_text(value: str, *, file: str | None, record: str | None, field: str) -> None:
    """Refuse text that cannot be stored as UTF-8: JSON's ``\\ud800`` escapes and file names
    with undecodable bytes give Python strings with lone surrogates; and text longer than
    :data:`MAX_TEXT_CHARS`."""
    if len(value) > MAX_TEXT_CHARS:
        raise DataError(f"text of {len(value):,} characters, more than the {MAX_TEXT_CHARS:,} "
                        "a post may have (is this a dump, or a broken file?)", file=file,
                        record=record, field=field)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise DataError(f"text is not valid Unicode (a lone surrogate at character "
                        f"{exc.start})", file=file, record=record, field=field) from None


def to_utc(value: Any, *, file: str | None, record: str | None, field_name: str) -> datetime:
    """Parse a timestamp (datetime, Unix seconds, ISO 8601 or Twitter's ``created_at``) to UTC."""
    try:
        if isinstance(value, datetime):
            out = value
        elif isinstance(value, bool):
            raise TypeError("a boolean is not a time")
        elif isinstance(value, int | float):
            if not math.isfinite(value):
                raise ValueError("not a finite number")
            out = datetime.fromtimestamp(float(value), tz=UTC)
        elif isinstance(value, str):
            text = value.strip()
            try:
                out = datetime.strptime(text, "%a %b %d %H:%M:%S %z %Y")  # Twitter API v1.1
            except ValueError:
                out = datetime.fromisoformat(text)
        else:
            raise TypeError(f"expected a time, got {type(value).__name__}")
        if out.tzinfo is None:
            out = out.replace(tzinfo=UTC)
        return out.astimezone(UTC)  # an offset can move year 1 or 9999 out of range
    except (ValueError, TypeError, OverflowError, OSError) as exc:
        raise DataError(f"unreadable time {value!r} ({exc})", file=file, record=record,
                        field=field_name) from None


def _where(rec: Mapping[str, Any]) -> tuple[str | None, str | None]:
    return rec.get("_file"), rec.get("_record") or rec.get("post_id")


def build_dataset(
    name: str,
    label_space: LabelSpace,
    events: Iterable[Mapping[str, Any]],
    posts: Iterable[Mapping[str, Any]],
    notes: Mapping[str, Any] | None = None,
) -> Dataset:
    """Validate loader records and build the canonical tables.

    Post records carry the schema's columns except the derived ``context_post_id`` and
    ``seconds_since_start``; ``time`` may be anything :func:`to_utc` reads; ``labels`` is a dict
    dimension -> label or None. Optional ``_file`` / ``_record`` keys locate a record for error
    messages. Raises :class:`DataError` naming file, record and field on the first problem.
    """
    space = {d: tuple(o) for d, o in label_space.items()}
    for dim, options in space.items():
        for text in (dim, *options):
            check_text(text, file=None, record=None, field=f"label_space.{dim}")
    event_rows = [dict(e) for e in events]
    event_index = _index_events(event_rows)

    by_event: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for rec in posts:
        rec = _check_post(dict(rec), space, event_index)
        by_event[rec["event_id"]].append(rec)

    rows: list[dict[str, Any]] = []
    for event_id, e in event_index.items():
        group = by_event.get(event_id, [])
        if not group:
            raise DataError("event has no posts", file=e.get("_file"),
                            record=e.get("_record") or event_id, field="posts")
        rows.extend(_order_event(group))

    schema = posts_schema(space)
    names = [f.name for f in schema]
    posts_table = pa.Table.from_pylist([{k: r.get(k) for k in names} for r in rows],
                                       schema=schema)
    events_table = pa.Table.from_pylist(
        [{k: e.get(k) for k in EVENTS_SCHEMA.names} for e in event_rows], schema=EVENTS_SCHEMA
    )
    return Dataset(name=name, label_space=space, events=events_table, posts=posts_table,
                   notes=dict(notes or {}))


def _index_events(event_rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Check the event records' fields and that their ids are unique; event id -> record."""
    event_index = {}
    for e in event_rows:
        for key in ("event_id", "topic", "topic_origin", "source"):
            if not isinstance(e.get(key), str) or not e.get(key):
                raise DataError("missing or not a non-empty string", file=e.get("_file"),
                                record=e.get("_record") or str(e.get("event_id")), field=key)
        for key in ("split", "metadata"):
            if e.get(key) is not None and not isinstance(e[key], str):
                raise DataError(f"expected a string or null, got {type(e[key]).__name__}",
                                file=e.get("_file"), record=e.get("_record") or e["event_id"],
                                field=key)
        for key in ("event_id", "topic", "topic_origin", "source", "split", "metadata"):
            if e.get(key) is not None:
                check_text(e[key], file=e.get("_file"), record=e.get("_record"), field=key)
        if e["event_id"] in event_index:
            raise DataError("duplicate event id", file=e.get("_file"),
                            record=e.get("_record") or e["event_id"], field="event_id")
        event_index[e["event_id"]] = e
    return event_index


def _check_post(rec: dict[str, Any], space: dict[str, tuple[str, ...]],
                event_index: Mapping[str, Any]) -> dict[str, Any]:
    """Check one post record (in place) and normalise its time, labels and profile."""
    file, record = _where(rec)
    for key in REQUIRED_POST_FIELDS:
        value = rec.get(key)
        if value is None or (key != "text" and value == ""):
            raise DataError("required field is missing", file=file, record=record, field=key)
    for key in ("event_id", "thread_id", "post_id", "text"):
        if not isinstance(rec[key], str):
            raise DataError(f"expected a string, got {type(rec[key]).__name__}", file=file,
                            record=record, field=key)
    for key in ("parent_id", "user_id"):
        if rec.get(key) is not None and not isinstance(rec[key], str):
            raise DataError(f"expected a string, got {type(rec[key]).__name__}", file=file,
                            record=record, field=key)
    for key in ("event_id", "thread_id", "post_id", "parent_id", "user_id", "text"):
        if rec.get(key) is not None:
            check_text(rec[key], file=file, record=record, field=key)
    rec["time"] = to_utc(rec["time"], file=file, record=record, field_name="time")
    labels = rec.get("labels") or {}
    if not isinstance(labels, Mapping):
        raise DataError("expected an object of labels", file=file, record=record,
                        field="labels")
    for dim, value in labels.items():
        if dim not in space:
            raise DataError(f"unknown action dimension (declared: {sorted(space)})",
                            file=file, record=record, field=f"labels.{dim}")
        if value is not None and value not in space[dim]:
            raise DataError(f"unknown label {value!r} (expected one of {list(space[dim])})",
                            file=file, record=record, field=f"labels.{dim}")
    rec["labels"] = {dim: labels.get(dim) for dim in space}
    rec["profile"] = _clean_profile(rec.get("profile"), file, record)
    if rec["event_id"] not in event_index:
        raise DataError("post refers to an event that was not declared", file=file,
                        record=record, field="event_id")
    return rec


def _profile_kind(t: pa.DataType) -> str:
    if pa.types.is_integer(t):
        return "count"
    if pa.types.is_boolean(t):
        return "bool"
    return "time" if pa.types.is_timestamp(t) else "text"


#: each profile field with what its value must be (looked up once, not per record)
_PROFILE_KINDS: tuple[tuple[str, str], ...] = tuple((f.name, _profile_kind(f.type))
                                                    for f in PROFILE_TYPE)


def _clean_profile(profile: Any, file: str | None, record: str | None) -> dict[str, Any] | None:
    if profile is None:
        return None
    if not isinstance(profile, Mapping):
        raise DataError("expected an object", file=file, record=record, field="profile")
    out: dict[str, Any] = {}
    for name, kind in _PROFILE_KINDS:
        value = profile.get(name)
        if value is None:
            out[name] = None
            continue
        where = {"file": file, "record": record, "field": f"profile.{name}"}
        if kind == "count":
            out[name] = _count(value, where)
        elif kind == "bool":
            if isinstance(value, bool):
                out[name] = value
            elif value in (0, 1, "true", "false", "True", "False"):
                out[name] = value in (1, "true", "True")
            else:
                raise DataError(f"expected true or false, got {value!r}", **where)
        elif kind == "time":
            out[name] = to_utc(value, file=file, record=record, field_name=f"profile.{name}")
        else:
            out[name] = value if isinstance(value, str) else str(value)
            check_text(out[name], **where)
    return out


def _count(value: Any, where: dict[str, Any]) -> int:
    """A profile count: a non-negative whole number that fits the int64 column, given as a
    number or as text (``"120"``, ``"1e3"``)."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise DataError(f"expected a whole number, got {value!r}", **where)
    number: int | float
    try:
        text = value.strip() if isinstance(value, str) else ""
        if isinstance(value, int):
            number = value
        elif text.isascii() and text.isdigit():
            number = int(text)  # exact, where float() would round a long count
        else:
            number = float(value)
    except ValueError:  # not a number, or an integer of more than 4,300 digits
        raise DataError(f"expected a whole number, got {str(value)[:40]!r}", **where) from None
    if isinstance(number, float) and not (math.isfinite(number) and number == int(number)):
        raise DataError(f"expected a whole number, got {value!r}", **where)
    if not 0 <= number < 2**63:
        raise DataError(f"expected a whole number from 0 to 2^63 - 1, got {str(value)[:40]}",
                        **where)
    return int(number)


def _order_event(group: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Sort one event's posts by (time, id), derive context and event-relative time, and check
    that ids are unique and that no reply is older than the post it replies to."""
    by_id: dict[str, dict[str, Any]] = {}
    for rec in group:
        if rec["post_id"] in by_id:
            file, record = _where(rec)
            raise DataError("duplicate post id in event", file=file, record=record,
                            field="post_id")
        by_id[rec["post_id"]] = rec
    sources: dict[str, str] = {}
    for rec in group:
        if rec.get("parent_id") is None:
            if rec["thread_id"] in sources:
                file, record = _where(rec)
                raise DataError(
                    f"thread {rec['thread_id']} has two source posts "
                    f"({sources[rec['thread_id']]} and {rec['post_id']})",
                    file=file, record=record, field="parent_id")
            sources[rec["thread_id"]] = rec["post_id"]
    for rec in group:  # a reply's context is its thread's source: every thread needs one
        if rec["thread_id"] not in sources:
            file, record = _where(rec)
            raise DataError(f"thread {rec['thread_id']} has no source post (a post without "
                            "parent_id)", file=file, record=record, field="thread_id")
    for rec in group:
        parent = by_id.get(rec.get("parent_id") or "")
        if parent is not None and rec["time"] < parent["time"]:
            file, record = _where(rec)
            raise DataError(
                f"reply time {rec['time'].isoformat()} is earlier than its parent "
                f"{parent['post_id']} ({parent['time'].isoformat()})",
                file=file, record=record, field="time")
        # a reply's context is its thread's source post (method.md §1); the source has none
        rec["context_post_id"] = (None if rec.get("parent_id") is None
                                  else sources[rec["thread_id"]])
    group = sorted(group, key=lambda r: (r["time"], id_key(r["post_id"])))
    start = group[0]["time"]
    for rec in group:
        rec["seconds_since_start"] = (rec["time"] - start).total_seconds()
    return group
