"""The canonical data model: every dataset enters mfray as an *events* table and a *posts* table.

An event is one real discussion (a topic and the posts that followed); it may hold many threads.
Each post's context is its thread's source post (``method.md`` §1); its parent is kept too.
Labels are one string per *action dimension* (e.g. ``stance``); the options of each dimension are
declared once per dataset (its ``LabelSpace``) and stored in the Parquet schema metadata.

Loaders only produce plain records (dicts); :func:`build_dataset` validates them, orders posts by
time (ties by id), derives ``context_post_id`` and ``seconds_since_start`` and builds the tables,
so every format gets the same checks and the same error messages.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from mfray.errors import DataError

#: dimension -> its options, in a fixed order (the order of probability vectors everywhere).
LabelSpace = Mapping[str, tuple[str, ...]]

STANCE = "stance"
STANCE_OPTIONS: tuple[str, ...] = ("support", "deny", "query", "comment")

TIME_TYPE = pa.timestamp("ms", tz="UTC")

#: Profile fields shared by all datasets; a field a dataset lacks is null (personas say "unknown").
PROFILE_TYPE = pa.struct(
    [
        ("screen_name", pa.string()),
        ("name", pa.string()),
        ("description", pa.string()),
        ("location", pa.string()),
        ("gender", pa.string()),  # "m" / "f" where the platform has it (Weibo)
        ("verified", pa.bool_()),
        ("followers_count", pa.int64()),
        ("friends_count", pa.int64()),
        ("statuses_count", pa.int64()),
        ("favourites_count", pa.int64()),
        ("bi_followers_count", pa.int64()),
        ("created_at", TIME_TYPE),
    ]
)
PROFILE_FIELDS: tuple[str, ...] = tuple(f.name for f in PROFILE_TYPE)

EVENTS_SCHEMA = pa.schema(
    [
        pa.field("event_id", pa.string(), nullable=False),
        pa.field("topic", pa.string(), nullable=False),
        # how the topic text was obtained: "given" or the name of the derivation rule
        pa.field("topic_origin", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),  # dataset family, e.g. "rumoureval"
        pa.field("split", pa.string()),  # "train" / "dev" / "test" where the release says
        pa.field("metadata", pa.string()),  # JSON object (e.g. thread veracity labels)
    ]
)

_POST_FIELDS = [
    pa.field("event_id", pa.string(), nullable=False),
    pa.field("thread_id", pa.string(), nullable=False),
    pa.field("post_id", pa.string(), nullable=False),
    pa.field("parent_id", pa.string()),  # null for a thread's source post
    pa.field("context_post_id", pa.string()),  # the thread's source post; null for the source
    pa.field("time", TIME_TYPE, nullable=False),
    pa.field("seconds_since_start", pa.float64(), nullable=False),  # since the event's first post
    pa.field("user_id", pa.string()),
    pa.field("profile", PROFILE_TYPE),
    pa.field("text", pa.string(), nullable=False),
]
REQUIRED_POST_FIELDS: tuple[str, ...] = ("event_id", "thread_id", "post_id", "time", "text")
LABEL_SPACE_KEY = b"mfray.label_space"


def posts_schema(label_space: LabelSpace) -> pa.Schema:
    """The posts schema of a dataset: the fixed columns plus ``labels``, a struct with one
    nullable string per action dimension. The label space travels in the schema metadata."""
    if not label_space:
        raise ValueError("a dataset declares at least one action dimension")
    labels = pa.struct([(dim, pa.string()) for dim in label_space])
    meta = {LABEL_SPACE_KEY: json.dumps({d: list(o) for d, o in label_space.items()}).encode()}
    return pa.schema([*_POST_FIELDS, pa.field("labels", labels)], metadata=meta)


def label_space_of(schema: pa.Schema) -> dict[str, tuple[str, ...]]:
    """Read the label space back from a posts table's schema metadata."""
    raw = (schema.metadata or {}).get(LABEL_SPACE_KEY)
    if raw is None:
        raise DataError("posts table has no declared label space", field="labels")
    try:
        space = json.loads(raw)
    except (ValueError, RecursionError):
        space = None
    if not (isinstance(space, dict) and all(isinstance(o, list) and all(isinstance(x, str)
                                                                          for x in o)
                                            for o in space.values())):
        raise DataError("posts table has an unreadable label space", field="labels")
    return {d: tuple(o) for d, o in space.items()}


@dataclass(frozen=True)
class Dataset:
    """One converted dataset: its events, its posts (time-ordered within each event) and the
    label space of its action dimensions."""

    name: str
    label_space: dict[str, tuple[str, ...]]
    events: pa.Table
    posts: pa.Table
    notes: dict[str, Any] = field(default_factory=dict)

    def event_ids(self) -> list[str]:
        return self.events.column("event_id").to_pylist()

    def posts_of(self, event_id: str) -> pa.Table:
        """The posts of one event, in time order."""
        import pyarrow.compute as pc

        return self.posts.filter(pc.equal(self.posts["event_id"], event_id))


# --------------------------------------------------------------------------------------------
# building and validating


def id_key(post_id: str) -> tuple[int, int, str]:
    """Order ids numerically where they are numbers (tweet ids), else as text. Numbers compare
    by length, then digits: no int() conversion, which refuses ids of more than 4,300 digits."""
    if post_id.isascii() and post_id.isdigit():
        digits = post_id.lstrip("0")
        return (0, len(digits), digits)
    return (1, 0, post_id)


def check_text(value: str, *, file: str | None, record: str | None, field: str) -> None:
    """Refuse text that cannot be stored as UTF-8: JSON's ``\\ud800`` escapes and file names
    with undecodable bytes give Python strings with lone surrogates."""
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

    by_event: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for rec in posts:
        rec = dict(rec)
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


# --------------------------------------------------------------------------------------------
# storage


def write_dataset(ds: Dataset, out_dir: str | os.PathLike[str]) -> Path:
    """Write ``events.parquet``, ``posts.parquet`` and ``dataset.json`` into ``out_dir``.

    All files are written into a temporary sibling directory that is renamed into place, so an
    interrupted conversion leaves nothing partial. An existing non-empty ``out_dir`` is replaced
    only if it holds a converted dataset (``dataset.json``); anything else is an error.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise DataError("output path exists and is not a directory", file=str(out))
    if out.exists() and any(out.iterdir()) and not (out / "dataset.json").exists():
        raise DataError("output directory exists, is not empty and is not an mfray dataset",
                        file=str(out))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        pq.write_table(ds.events, tmp / "events.parquet")
        pq.write_table(ds.posts, tmp / "posts.parquet")
        manifest = {
            "name": ds.name,
            "label_space": {d: list(o) for d, o in ds.label_space.items()},
            "events": ds.events.num_rows,
            "posts": ds.posts.num_rows,
            "notes": ds.notes,
        }
        (tmp / "dataset.json").write_text(json.dumps(manifest, indent=2, default=str) + "\n")
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old)
        else:
            tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def read_dataset(path: str | os.PathLike[str]) -> Dataset:
    """Read a dataset written by :func:`write_dataset`."""
    root = Path(path)
    manifest_path = root / "dataset.json"
    if not manifest_path.exists():
        raise DataError("not an mfray dataset (no dataset.json); convert it first with "
                        "'mfray data convert'", file=str(root))
    damaged = "damaged dataset ({}); convert it again with 'mfray data convert'"
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        posts = pq.read_table(root / "posts.parquet")
        events = pq.read_table(root / "events.parquet")
    except (OSError, ValueError, RecursionError, pa.ArrowException) as exc:
        raise DataError(damaged.format(exc), file=str(root)) from None
    if not (isinstance(manifest, dict) and isinstance(manifest.get("name"), str)
            and isinstance(manifest.get("notes", {}), dict)):
        raise DataError(damaged.format("dataset.json is not a manifest"), file=str(root))
    space = label_space_of(posts.schema)
    if not space:
        raise DataError(damaged.format("no action dimension declared"), file=str(root))
    # the columns every reader relies on, with their types (nullability and metadata aside)
    for table, expected, name in ((events, EVENTS_SCHEMA, "events"),
                                  (posts, posts_schema(space), "posts")):
        for f in expected:
            if f.name not in table.schema.names or not table.schema.field(f.name).type.equals(
                    f.type):
                raise DataError(damaged.format(f"{name}.parquet lacks column {f.name} of type "
                                               f"{f.type}"), file=str(root))
    return Dataset(name=manifest["name"], label_space=space, events=events, posts=posts,
                   notes=manifest.get("notes", {}))


# --------------------------------------------------------------------------------------------
# summaries


def dataset_info(ds: Dataset) -> dict[str, Any]:
    """Counts and label distributions: events, threads, posts, replies per event, and for each
    action dimension the count of each label (null labels counted as ``unlabelled``)."""
    posts = ds.posts.to_pydict()
    threads = {(e, t) for e, t in zip(posts["event_id"], posts["thread_id"], strict=True)}
    replies: Counter[str] = Counter(
        e for e, p in zip(posts["event_id"], posts["parent_id"], strict=True) if p is not None)
    per_event_posts = Counter(posts["event_id"])
    labels: dict[str, dict[str, int]] = {}
    for dim, options in ds.label_space.items():
        counts = Counter(lab[dim] for lab in posts["labels"])
        labels[dim] = {o: counts.get(o, 0) for o in options}
        labels[dim]["unlabelled"] = counts.get(None, 0)
    ev = ds.events.to_pydict()
    return {
        "name": ds.name,
        "events": ds.events.num_rows,
        "threads": len(threads),
        "posts": ds.posts.num_rows,
        "replies": sum(replies.values()),
        "labels": labels,
        "per_event": [
            {"event_id": e, "split": s, "threads": sum(1 for x, _ in threads if x == e),
             "posts": per_event_posts[e], "replies": replies[e]}
            for e, s in zip(ev["event_id"], ev["split"], strict=True)
        ],
    }


def format_info(info: dict[str, Any]) -> str:
    """:func:`dataset_info` as text (``mfray data info``): counts, label distributions,
    replies per event."""
    lines = [(f"dataset {info['name']}: {info['events']} events, {info['threads']} threads, "
              f"{info['posts']} posts ({info['replies']} replies)")]
    for dim, counts in info["labels"].items():
        total = sum(counts.values()) or 1
        parts = ", ".join(f"{k} {v} ({v / total:.1%})" for k, v in counts.items())
        lines.append(f"labels {dim}: {parts}")
    lines.append(f"{'event':<24} {'split':<6} {'threads':>7} {'posts':>6} {'replies':>7}")
    for e in info["per_event"]:
        lines.append(f"{e['event_id']:<24} {e['split'] or '-':<6} {e['threads']:>7} "
                     f"{e['posts']:>6} {e['replies']:>7}")
    return "\n".join(lines)
