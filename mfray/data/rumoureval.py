"""Loader for the RumourEval / PHEME rumour threads (SemEval-2017 Task 8, SemEval-2019 Task 7).

Every release stores one folder per thread, ``<source_id>/{source-tweet/<id>.json,
replies/<id>.json, structure.json, urls.dat}``; the releases differ in where the thread folders
sit and how the labels are named. :func:`load_rumoureval` finds the layout itself:

* **thread folders** are the folders holding ``source-tweet/``, ``replies/`` or
  ``structure.json``, wherever they are under the root;
* **one event per folder that holds thread folders**; the event id is that folder's name
  (``rumoureval-data/charliehebdo/<thread>`` -> ``charliehebdo``). Flat layouts, the 2017 test
  release (threads directly under the root) and the 2019 Reddit folders
  (``reddit-training-data/<thread>``), therefore become one event each, named after the folder
  (``reddit-training-data``). Two holding folders with the same name get their path relative
  to the root as event id instead;
* **label files** are the JSON files outside thread folders whose names say what they hold:
  ``*subtaskA*.json`` ({post_id: stance}), ``*subtaskB*.json`` ({source_id: veracity}) and
  ``*key*.json`` ({"subtaskaenglish": {...}, "subtaskbenglish": {...}}). The split comes from
  the name: ``train`` -> "train", ``dev`` -> "dev", otherwise (``subtaskA.json``,
  ``final-eval-key.json``) -> "test". An event's split is the split of the files that label
  its posts; an event whose threads come from several splits gets no split and lists
  ``thread_splits`` in its metadata;
* **platform** per thread from the source object: Twitter API v1.1 statuses, or Reddit API
  objects (``Listing`` wrappers, ``{"kind": "t1"|"t3", "data": {...}}`` or plain objects).

Mapping. Twitter: post id = ``id_str`` (must match the file name), time = ``created_at``,
text = ``full_text`` or ``text``, user id = the embedded user's ``id_str``, profile from the
embedded user. Reddit: post id = ``id``, time = ``created_utc``, text = title + selftext for the
source and ``body`` for replies ("[deleted]" when a deleted comment has no body), user id =
``author`` (none for deleted authors), profile = the screen name only (Reddit has no follower
counts). A reply's parent is the post it names (``in_reply_to_status_id_str`` / ``parent_id``)
when that post is in the thread, else its nearest ancestor in ``structure.json`` that is in the
thread, else the source post. Posts without a stance label keep a null label.

Topic. The data has no topic text, so each event's topic is derived from the text of its
earliest source post, URLs removed and whitespace collapsed (the next earliest source if that
leaves nothing), with ``topic_origin = "earliest-source-post"``. Event metadata (a JSON string)
holds ``layout``, ``platform`` and the thread veracity labels ``{"veracity": {source_id:
label or null}}``.
"""

from __future__ import annotations

import json
import os
import re
from collections import defaultdict
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

from tqdm import tqdm

from mfray.data.build import build_dataset, id_key, to_utc
from mfray.data.schema import STANCE, STANCE_OPTIONS, Dataset
from mfray.data.topics import EARLIEST, clean
from mfray.errors import DataError

NAME = "rumoureval"
VERACITY_OPTIONS: tuple[str, ...] = ("true", "false", "unverified")
TOPIC_ORIGIN = EARLIEST
DELETED_TEXT = "[deleted]"
#: what Reddit shows for a comment its author deleted or a moderator removed
GONE_TEXTS = (DELETED_TEXT, "[removed]")
_PROFILE_KEYS = ("screen_name", "name", "description", "location", "verified", "followers_count",
                 "friends_count", "statuses_count", "favourites_count", "created_at")
_REDDIT_PREFIX = re.compile(r"^t\d_")
_KEY_DIMS = {"subtaskaenglish": "stance", "subtaskbenglish": "veracity"}


class _Thread(NamedTuple):
    source: dict[str, Any]
    platform: str  # "twitter" / "reddit"
    post_ids: list[str]


class _Label(NamedTuple):
    value: str
    split: str | None
    style: str  # which release's naming the label file follows
    file: str


def load_rumoureval(root: str | os.PathLike[str]) -> Dataset:
    """Load every RumourEval / PHEME thread under ``root`` into a canonical :class:`Dataset`.

    Accepts the 2017 train/dev and test releases and the 2019 Twitter and Reddit releases
    (see the module docstring for how layouts, events, splits and topics are derived).
    Raises :class:`DataError` naming the file, record and field of the first problem.
    """
    base = Path(root)
    if not base.is_dir():
        raise DataError("not a directory", file=str(base))
    thread_dirs, label_paths = _scan(base)
    if not thread_dirs:
        raise DataError("no RumourEval thread folders (with source-tweet/) found", file=str(base))
    stance, veracity = _read_labels(label_paths)
    event_ids = _event_ids(base, thread_dirs)

    posts: list[dict[str, Any]] = []
    threads: dict[str, list[_Thread]] = defaultdict(list)
    stubs: list[set[str]] = []
    for thread_dir in tqdm(thread_dirs, desc="rumoureval threads", unit="thread", disable=None):
        event_id = event_ids[thread_dir.parent]
        records, platform, more = _read_thread(thread_dir, event_id)
        stubs += more
        for rec in records:
            label = stance.get(rec["post_id"])
            rec["labels"] = {STANCE: label.value if label else None}
        posts.extend(records)
        threads[event_id].append(_Thread(records[0], platform, [r["post_id"] for r in records]))

    events = [_event_row(eid, threads[eid], stance, veracity, holder)
              for holder, eid in event_ids.items()]
    post_ids = {p["post_id"] for p in posts}
    thread_ids = {t.source["post_id"] for group in threads.values() for t in group}
    notes = {
        "root": str(base),
        "label_files": sorted({lab.file for lab in [*stance.values(), *veracity.values()]}),
        "stance_labels_without_post": sum(1 for k in stance if k not in post_ids),
        "veracity_labels_without_thread": sum(1 for k in veracity if k not in thread_ids),
        "reddit_more_stubs_skipped": len(stubs),
        "stance_labels_on_skipped_stubs": len(set(stance) & set().union(*stubs) - post_ids),
        # kept, with their labels: a reply's stance is labelled on what it was
        "posts_deleted_or_removed": sum(1 for p in posts if p["text"] in GONE_TEXTS),
        "posts_without_author": sum(1 for p in posts if p["user_id"] is None),
    }
    return build_dataset(NAME, {STANCE: STANCE_OPTIONS}, events, posts, notes=notes)


# --------------------------------------------------------------------------------------------
# finding files


def _scan(base: Path) -> tuple[list[Path], list[Path]]:
    """Thread folders and candidate label files under ``base``, in a stable order. Label
    files are looked for outside thread folders only (those hold posts, not labels)."""
    thread_dirs: list[Path] = []
    label_paths: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(base):
        here = Path(dirpath)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        if {"source-tweet", "replies", "structure.json"} & {*dirnames, *filenames}:
            thread_dirs.append(here)
            dirnames[:] = []  # a thread's own subfolders hold posts, not threads
            continue
        label_paths.extend(here / f for f in sorted(filenames)
                           if f.endswith(".json") and _label_file_kind(f) is not None)
    return sorted(thread_dirs), label_paths


def _event_ids(base: Path, thread_dirs: list[Path]) -> dict[Path, str]:
    """One event per folder holding threads, named after it (its relative path on clashes)."""
    holders = sorted({d.parent for d in thread_dirs})
    names = [(h.resolve().name if h == base else h.name) for h in holders]
    out = {}
    for holder, name in zip(holders, names, strict=True):
        if names.count(name) > 1 and holder != base:
            name = holder.relative_to(base).as_posix()
        out[holder] = name
    return out


def _read_json(path: Path, record: str | None) -> Any:
    try:
        with path.open(encoding="utf-8-sig") as fh:
            return json.load(fh)
    except json.JSONDecodeError as exc:
        raise DataError(f"broken JSON ({exc.msg} at line {exc.lineno} column {exc.colno})",
                        file=str(path), record=record, field="json") from None
    except RecursionError:
        raise DataError("JSON nested too deeply", file=str(path), record=record,
                        field="json") from None
    except (OSError, ValueError) as exc:  # UnicodeDecodeError; an int of > 4,300 digits
        raise DataError(f"unreadable file ({exc})", file=str(path), record=record) from None


# --------------------------------------------------------------------------------------------
# labels


def _label_file_kind(name: str) -> tuple[str, str | None, str] | None:
    """(what the file holds, its split, the release style) from a label file's name."""
    low = name.lower()
    split = "train" if "train" in low else "dev" if "dev" in low else "test"
    if "subtaska" in low:
        return "stance", split, "2017"
    if "subtaskb" in low:
        return "veracity", split, "2017"
    if "key" in low:
        return "key", split, "2019"
    return None


def _read_labels(paths: list[Path]) -> tuple[dict[str, _Label], dict[str, _Label]]:
    """Stance labels by post id and veracity labels by source id, from all label files."""
    out: dict[str, dict[str, _Label]] = {"stance": {}, "veracity": {}}
    for path in paths:
        kind, split, style = _label_file_kind(path.name) or ("", None, "")
        data = _read_json(path, None)
        if kind == "key":
            if not isinstance(data, Mapping):
                raise DataError("expected a JSON object", file=str(path), field="key")
            tables = [(dim, data[k], k) for k, dim in _KEY_DIMS.items() if k in data]
            if not tables:
                raise DataError(f"a key file holds {' and/or '.join(_KEY_DIMS)}",
                                file=str(path), field="key")
        else:
            tables = [(kind, data, kind)]
        for dim, table, field in tables:
            if not isinstance(table, Mapping):
                raise DataError("expected an object {id: label}", file=str(path), field=field)
            options = STANCE_OPTIONS if dim == "stance" else VERACITY_OPTIONS
            for post_id, value in table.items():
                if value not in options:
                    raise DataError(f"unknown {dim} label {value!r} (expected one of "
                                    f"{list(options)})", file=str(path), record=post_id,
                                    field=field)
                old = out[dim].get(post_id)
                if old is not None and old.value != value:
                    raise DataError(f"{dim} label {value!r} contradicts {old.value!r} in "
                                    f"{old.file}", file=str(path), record=post_id, field=field)
                out[dim][post_id] = _Label(value, split, style, str(path))
    return out["stance"], out["veracity"]


# --------------------------------------------------------------------------------------------
# threads


def _read_thread(thread_dir: Path, event_id: str
                 ) -> tuple[list[dict[str, Any]], str, list[set[str]]]:
    """The post records of one thread (source first) with resolved parents, and its platform."""
    record = thread_dir.name
    sources = sorted((thread_dir / "source-tweet").glob("*.json"))
    if len(sources) != 1:
        raise DataError(f"a thread folder holds exactly one source post, found {len(sources)}",
                        file=str(thread_dir / "source-tweet"), record=record,
                        field="source-tweet")
    raw_source = _read_json(sources[0], sources[0].stem)
    platform = "reddit" if _looks_reddit(raw_source) else "twitter"
    parse = _reddit_record if platform == "reddit" else _tweet_record
    source = parse(raw_source, sources[0], is_source=True)
    replies, stubs = [], []
    for p in sorted((thread_dir / "replies").glob("*.json")):
        raw = _read_json(p, p.stem)
        if platform == "reddit" and (more := _more_stub(raw)) is not None:
            stubs.append(more)  # no post: a placeholder for comments the release lacks
            continue
        replies.append(parse(raw, p, is_source=False))
    structure = thread_dir / "structure.json"
    tree = _structure_parents(structure) if structure.exists() else {}

    by_id = {source["post_id"]: source}
    for rec in replies:
        if rec["post_id"] in by_id:
            raise DataError("duplicate post id in thread", file=rec["_file"],
                            record=rec["post_id"], field="id")
        by_id[rec["post_id"]] = rec
    for rec in [source, *replies]:
        rec["event_id"], rec["thread_id"] = event_id, source["post_id"]
        named = rec.pop("_named_parent")
        rec["parent_id"] = None if rec is source else _parent_of(rec["post_id"], named, tree,
                                                                 by_id, source["post_id"])
    return [source, *replies], platform, stubs


def _more_stub(obj: Any) -> set[str] | None:
    """The ids a Reddit "more" stub stands for (its own and its children's), or None for
    anything else. The API lists comments it did not send as ``{"kind": "more", "data":
    {"id": ..., "children": [...]}}``; RumourEval-2019 keeps 71 such files as replies."""
    while isinstance(obj, list) and obj:
        obj = obj[0]
    if not (isinstance(obj, Mapping) and obj.get("kind") == "more"
            and isinstance(obj.get("data"), Mapping)):
        return None
    data = obj["data"]
    children = data.get("children") if isinstance(data.get("children"), list) else []
    return {str(i) for i in [data.get("id"), *children] if isinstance(i, str | int)}


def _parent_of(post_id: str, named: str | None, tree: Mapping[str, str | None],
               posts: Mapping[str, Any], source_id: str) -> str:
    """The post named as parent if it is in the thread, else the nearest ancestor in
    structure.json that is (some trees hold ids whose files are missing), else the source."""
    if named is not None and named != post_id and named in posts:
        return named
    seen = {post_id}
    node = tree.get(post_id)
    while node is not None and node not in seen:
        if node in posts:
            return node
        seen.add(node)
        node = tree.get(node)
    return source_id


def _structure_parents(path: Path) -> dict[str, str | None]:
    """structure.json ({id: {child: {...} | []}}) as child -> parent (None for its roots)."""
    data = _read_json(path, path.parent.name)
    out: dict[str, str | None] = {}
    stack: list[tuple[Any, str | None]] = [(data, None)]
    while stack:
        node, parent = stack.pop()
        if isinstance(node, list) and not node:
            continue
        if not isinstance(node, Mapping):
            raise DataError(f"expected an object or [], got {type(node).__name__}",
                            file=str(path), record=parent, field="structure")
        for child, sub in node.items():
            out[str(child)] = parent
            stack.append((sub, str(child)))
    return out


def _looks_reddit(obj: Any) -> bool:
    if isinstance(obj, list):
        return True
    return isinstance(obj, Mapping) and ("kind" in obj or ("created_utc" in obj
                                                           and "created_at" not in obj))


def _field(obj: Mapping[str, Any], key: str, path: Path, record: str, kinds: type | tuple[type, ...],
           *, required: bool = True) -> Any:
    value = obj.get(key)
    if value is None:
        if required:
            raise DataError("required field is missing", file=str(path), record=record,
                            field=key)
        return None
    if isinstance(value, bool) or not isinstance(value, kinds):
        raise DataError(f"wrong type {type(value).__name__}", file=str(path), record=record,
                        field=key)
    return value


def _check_id(post_id: str, path: Path, key: str) -> None:
    if post_id != path.stem:
        raise DataError(f"id {post_id!r} differs from the file name", file=str(path),
                        record=path.stem, field=key)


def _tweet_record(obj: Any, path: Path, *, is_source: bool) -> dict[str, Any]:
    """A Twitter API v1.1 status as a post record (thread fields filled in by the caller)."""
    if not isinstance(obj, Mapping):
        raise DataError(f"expected a JSON object, got {type(obj).__name__}", file=str(path),
                        record=path.stem, field="json")
    post_id = _field(obj, "id_str", path, path.stem, str)
    _check_id(post_id, path, "id_str")
    text_key = "full_text" if obj.get("full_text") is not None else "text"
    text = _field(obj, text_key, path, post_id, str)
    time = to_utc(_field(obj, "created_at", path, post_id, str), file=str(path),
                  record=post_id, field_name="created_at")
    user = _field(obj, "user", path, post_id, Mapping, required=False)
    user_id = profile = None
    if user is not None:
        user_id = _field(user, "id_str", path, post_id, str, required=False)
        profile = {k: user.get(k) for k in _PROFILE_KEYS}
    named = _field(obj, "in_reply_to_status_id_str", path, post_id, str, required=False)
    return {"post_id": post_id, "time": time, "text": text, "user_id": user_id,
            "profile": profile, "_named_parent": None if is_source else named,
            "_file": str(path), "_record": post_id}


def _reddit_data(obj: Any, path: Path) -> Mapping[str, Any]:
    """The post object inside a Reddit API answer: a list of Listings (first one), a Listing
    (first child), a ``{"kind": ..., "data": {...}}`` thing, or a plain object."""
    for _ in range(4):  # a list holds Listings, which hold things, which hold the data
        if isinstance(obj, list) and obj:
            obj = obj[0]
        elif isinstance(obj, Mapping) and obj.get("kind") == "Listing":
            children = obj.get("data", {}).get("children") if isinstance(obj.get("data"),
                                                                        Mapping) else None
            if not isinstance(children, list) or not children:
                raise DataError("Listing without children", file=str(path), record=path.stem,
                                field="data.children")
            obj = children[0]
        elif isinstance(obj, Mapping) and "kind" in obj and isinstance(obj.get("data"), Mapping):
            obj = obj["data"]
        else:
            break
    if not isinstance(obj, Mapping):
        raise DataError(f"expected a Reddit object, got {type(obj).__name__}", file=str(path),
                        record=path.stem, field="json")
    return obj


def _reddit_record(obj: Any, path: Path, *, is_source: bool) -> dict[str, Any]:
    """A Reddit submission (source) or comment (reply) as a post record."""
    data = _reddit_data(obj, path)
    post_id = _field(data, "id", path, path.stem, str)
    _check_id(post_id, path, "id")
    if is_source:
        title = _field(data, "title", path, post_id, str)
        body = _field(data, "selftext", path, post_id, str, required=False) or ""
        text = f"{title}\n\n{body}" if body.strip() else title
    else:  # a deleted comment may come without body and author
        text = _field(data, "body", path, post_id, str, required=False) or DELETED_TEXT
    time = to_utc(_field(data, "created_utc", path, post_id, (int, float, str)), file=str(path),
                  record=post_id, field_name="created_utc")
    author = _field(data, "author", path, post_id, str, required=False)
    if author in ("[deleted]", "[removed]"):
        author = None  # one shared placeholder for many people: not a user
    named = _field(data, "parent_id", path, post_id, str, required=False)
    return {"post_id": post_id, "time": time, "text": text, "user_id": author,
            "profile": None if author is None else {"screen_name": author},
            "_named_parent": None if is_source or named is None else _REDDIT_PREFIX.sub("", named),
            "_file": str(path), "_record": post_id}


# --------------------------------------------------------------------------------------------
# events


def _event_row(event_id: str, threads: list[_Thread], stance: Mapping[str, _Label],
               veracity: Mapping[str, _Label], event_dir: Path) -> dict[str, Any]:
    """The event record: derived topic, split and metadata (veracity labels, layout)."""
    sources = sorted((t.source for t in threads), key=lambda s: (s["time"], id_key(s["post_id"])))
    topic = next((t for t in (clean(s["text"]) for s in sources) if t), event_id)
    # the labels of a thread's posts say which split and which release it comes from
    thread_labels = {
        t.source["post_id"]: [stance[p] for p in t.post_ids if p in stance]
        + ([veracity[t.source["post_id"]]] if t.source["post_id"] in veracity else [])
        for t in threads}
    thread_splits = {tid: _one({lab.split for lab in labs}) for tid, labs in thread_labels.items()}
    labels = [lab for labs in thread_labels.values() for lab in labs]
    splits = {s for s in thread_splits.values() if s is not None}
    platforms = sorted({t.platform for t in threads})
    if "reddit" in platforms:
        layout = "2019-reddit"
    elif any(lab.style == "2019" for lab in labels):
        layout = "2019-twitter"
    elif labels:
        layout = "2017-test" if {lab.split for lab in labels} == {"test"} else "2017-traindev"
    else:
        layout = "unlabelled"
    meta: dict[str, Any] = {
        "layout": layout, "platform": "+".join(platforms),
        "veracity": {t: (veracity[t].value if t in veracity else None)
                     for t in sorted(thread_labels, key=id_key)},
    }
    if len(splits) > 1:
        meta["thread_splits"] = thread_splits
    return {"event_id": event_id, "topic": topic, "topic_origin": TOPIC_ORIGIN, "source": NAME,
            "split": _one(splits), "metadata": json.dumps(meta, sort_keys=True),
            "_file": str(event_dir)}


def _one(values: set[str | None]) -> str | None:
    """The single value of a set, or None when it is empty or holds several."""
    return next(iter(values)) if len(values) == 1 else None
