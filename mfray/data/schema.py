"""The canonical data model: every dataset enters mfray as an *events* table and a *posts* table.

An event is one real discussion (a topic and the posts that followed); it may hold many threads.
Each post's context is its thread's source post (``method.md`` §1); its parent is kept too.
Labels are one string per *action dimension* (e.g. ``stance``); the options of each dimension are
declared once per dataset (its ``LabelSpace``) and stored in the Parquet schema metadata.

This module declares the tables' schemas, the :class:`Dataset` that holds them, and how a dataset
is written, read and summarised. Loaders only produce plain records (dicts);
:func:`mfray.data.build.build_dataset` validates them and builds the tables.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import tempfile
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
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
        """The posts of one event, in time order: a slice of the posts table, not a copy,
        where each event's posts lie together (as every dataset mfray writes has them)."""
        import pyarrow.compute as pc

        where = self._event_rows
        if where is None:
            return self.posts.filter(pc.equal(self.posts["event_id"], event_id))
        start, stop = where.get(event_id, (0, 0))
        return self.posts.slice(start, stop - start)

    @functools.cached_property
    def _event_rows(self) -> dict[str, tuple[int, int]] | None:
        """Each event's first and last row + 1, where each event's rows are contiguous."""
        import pyarrow.compute as pc

        runs = pc.run_end_encode(self.posts["event_id"].combine_chunks())
        ends, ids = runs.run_ends.to_pylist(), runs.values.to_pylist()
        if len(set(ids)) != len(ids):
            return None
        return {e: (start, stop) for e, start, stop in zip(ids, [0, *ends[:-1]], ends,
                                                           strict=True)}


# --------------------------------------------------------------------------------------------
# storage


def write_dataset(ds: Dataset, out_dir: str | os.PathLike[str]) -> Path:
    """Write ``events.parquet``, ``posts.parquet`` and ``dataset.json`` into ``out_dir``.

    All files are written into a temporary sibling directory that is renamed into place, so an
    interrupted conversion leaves nothing partial. An existing non-empty ``out_dir`` is replaced
    only if it holds a converted dataset (``dataset.json``); anything else is an error.
    """
    return write_dataset_parts([ds], out_dir, lambda: ds.notes)


def write_dataset_parts(parts: Iterable[Dataset], out_dir: str | os.PathLike[str],
                        notes: Callable[[], Mapping[str, Any]]) -> Path:
    """:func:`write_dataset` for a dataset made part by part, each part some of its events
    (a large synthetic world): only one part is in memory at a time. ``notes`` is called once
    the parts are written."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise DataError("output path exists and is not a directory", file=str(out))
    if out.exists() and any(out.iterdir()) and not (out / "dataset.json").exists():
        raise DataError("output directory exists, is not empty and is not an mfray dataset",
                        file=str(out))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        writers: dict[str, pq.ParquetWriter] = {}
        first, n_events, n_posts = None, 0, 0
        for ds in parts:
            first = first or ds
            for name, table in (("events", ds.events), ("posts", ds.posts)):
                if name not in writers:
                    writers[name] = pq.ParquetWriter(tmp / f"{name}.parquet", table.schema)
                writers[name].write_table(table)
            n_events, n_posts = n_events + ds.events.num_rows, n_posts + ds.posts.num_rows
        for w in writers.values():
            w.close()
        if first is None:
            raise DataError("a dataset has at least one event", file=str(out))
        manifest = {
            "name": first.name,
            "label_space": {d: list(o) for d, o in first.label_space.items()},
            "events": n_events,
            "posts": n_posts,
            "notes": dict(notes()),
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
