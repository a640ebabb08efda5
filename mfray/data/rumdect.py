"""Loader for the Weibo rumour events of Ma et al. (IJCAI 2016), known as "rumdect".

Layout: one JSON array per event, named ``<event_id>.json``; its first record is the source post,
the others are reposts and comments. The release puts the event files in ``Weibo/`` next to a label
file ``Weibo.txt`` of lines ``eid:<id>\\tlabel:<0|1>\\t<post ids>`` (1 = rumour). :func:`load_rumdect`
accepts one event file, a folder of event files, or the release root holding ``Weibo/``; the label
file is looked for in that folder and its parent.

Each event is one thread whose id is the source post's ``mid``. Weibo has no human stance labels,
but one action dimension follows from the data (``method.md`` §5c): ``behaviour`` is ``share``
for a reply with empty text (a plain repost) and ``comment`` otherwise; the source post has none.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mfray.data.build import build_dataset
from mfray.data.schema import Dataset
from mfray.errors import DataError

NAME = "rumdect"
SOURCE = "rumdect"
BEHAVIOUR = "behaviour"
BEHAVIOUR_OPTIONS: tuple[str, ...] = ("share", "comment")
LABEL_FILE = "Weibo.txt"
TOPIC_ORIGIN = "source-post"

#: canonical profile field -> rumdect record key
PROFILE_KEYS: dict[str, str] = {
    "screen_name": "screen_name",
    "name": "username",
    "description": "user_description",
    "location": "user_location",
    "gender": "gender",
    "verified": "verified",
    "followers_count": "followers_count",
    "friends_count": "friends_count",
    "statuses_count": "statuses_count",
    "favourites_count": "favourites_count",
    "bi_followers_count": "bi_followers_count",
    "created_at": "user_created_at",
}


def load_rumdect(path: str | os.PathLike[str]) -> Dataset:
    """Load Weibo rumour events from one event file or a folder of them.

    Raises :class:`DataError` naming the file, the record (its index in the event's array and
    its ``mid``) and the field on the first malformed record, and when no event file is found.
    """
    files, label_file = _locate(Path(path))
    labels = _read_labels(label_file) if label_file is not None else {}
    events: list[dict[str, Any]] = []
    posts: list[dict[str, Any]] = []
    for file in files:
        event, event_posts = _read_event(file, labels.get(file.stem))
        events.append(event)
        posts.extend(event_posts)
    notes = {"label_file": str(label_file) if label_file else None, "behaviour_rule":
             "reply with empty text = share, otherwise comment; source post unlabelled"}
    return build_dataset(NAME, {BEHAVIOUR: BEHAVIOUR_OPTIONS}, events, posts, notes=notes)


def _locate(root: Path) -> tuple[list[Path], Path | None]:
    """The event files under ``root`` (sorted by name) and the label file, if any."""
    if root.is_file():
        folder, files = root.parent, [root]
    elif root.is_dir():
        folder = root
        files = sorted(root.glob("*.json"))
        if not files and (root / "Weibo").is_dir():  # the release root
            folder = root / "Weibo"
            files = sorted(folder.glob("*.json"))
    else:
        raise DataError("no such file or folder", file=str(root))
    if not files:
        raise DataError("no event files (*.json) found", file=str(root))
    for candidate in (folder / LABEL_FILE, folder.parent / LABEL_FILE):
        if candidate.is_file():
            return files, candidate
    return files, None


def _read_labels(file: Path) -> dict[str, bool]:
    """Event id -> is rumour, from ``Weibo.txt``."""
    out: dict[str, bool] = {}
    try:
        text = file.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"unreadable label file ({exc})", file=str(file)) from None
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split()  # tab-separated in the release; post ids are space-separated
        where = {"file": str(file), "record": f"line {n}"}
        if not parts[0].startswith("eid:") or len(parts[0]) == 4:
            raise DataError("expected 'eid:<id>' first", **where, field="eid")
        if len(parts) < 2 or not parts[1].startswith("label:"):
            raise DataError("expected 'label:<0|1>' second", **where, field="label")
        value = parts[1][len("label:"):]
        if value not in ("0", "1"):
            raise DataError(f"unknown label {value!r} (expected 0 or 1)", **where, field="label")
        out[parts[0][len("eid:"):]] = value == "1"
    return out


def _read_event(file: Path, rumour: bool | None) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """One event file -> its event record and post records (for :func:`build_dataset`)."""
    try:
        records = json.loads(file.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as exc:
        raise DataError(f"broken JSON: {exc.msg}", file=str(file),
                        record=f"line {exc.lineno} column {exc.colno}", field="(syntax)") from None
    except UnicodeDecodeError as exc:
        raise DataError(f"not UTF-8 text ({exc.reason})", file=str(file),
                        record=f"byte {exc.start}", field="(encoding)") from None
    except RecursionError:
        raise DataError("JSON nested too deeply", file=str(file), record="top level",
                        field="(syntax)") from None
    except (OSError, ValueError) as exc:  # a folder named *.json; an int of > 4,300 digits
        raise DataError(f"unreadable event file ({exc})", file=str(file)) from None
    if not isinstance(records, list):
        raise DataError(f"expected a JSON array of posts, got {type(records).__name__}",
                        file=str(file), record="top level", field="(array)")
    if not records:
        raise DataError("empty event: no source post", file=str(file), record="top level",
                        field="(array)")
    event_id = file.stem
    mids = [_mid(rec, i, file) for i, rec in enumerate(records)]
    source_mid, known = mids[0], set(mids)
    posts = []
    for i, (rec, mid) in enumerate(zip(records, mids, strict=True)):
        where = {"file": str(file), "record": f"{i} (mid {mid})"}
        parent = None if i == 0 else _opt_id(rec, "parent", where)
        # a missing or unknown parent still replies within the event: its source post
        if i > 0 and (parent is None or parent == mid or parent not in known):
            parent = source_mid
        text = _text(rec, "text", where)
        posts.append({
            "_file": str(file), "_record": where["record"],
            "event_id": event_id, "thread_id": source_mid, "post_id": mid, "parent_id": parent,
            "time": _time(rec, where), "user_id": _opt_id(rec, "uid", where),
            "profile": _profile(rec), "text": text,
            "labels": {BEHAVIOUR: None if i == 0 else ("share" if text == "" else "comment")},
        })
    source_where = {"file": str(file), "record": f"0 (mid {source_mid})"}
    topic = _text(records[0], "original_text", source_where) or posts[0]["text"]
    if not topic.strip():
        raise DataError("the source post has no text to use as topic", **source_where,
                        field="text")
    event = {"_file": str(file), "event_id": event_id, "topic": topic,
             "topic_origin": TOPIC_ORIGIN, "source": SOURCE, "split": None,
             "metadata": None if rumour is None else json.dumps({"rumour": rumour})}
    return event, posts


def _mid(rec: Any, i: int, file: Path) -> str:
    if not isinstance(rec, Mapping):
        raise DataError(f"expected an object, got {type(rec).__name__}", file=str(file),
                        record=str(i), field="(record)")
    mid = _opt_id(rec, "mid", {"file": str(file), "record": str(i)})
    if mid is None:
        raise DataError("required field is missing", file=str(file), record=str(i), field="mid")
    return mid


def _opt_id(rec: Mapping[str, Any], key: str, where: dict[str, str]) -> str | None:
    """An id that may be written as a number or a string; None when absent or empty."""
    value = rec.get(key)
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise DataError(f"expected an id (string or integer), got {value!r}", **where,
                        field=key)
    return str(value)


def _text(rec: Mapping[str, Any], key: str, where: dict[str, str]) -> str:
    """A text field; absent or null reads as the empty string (a plain repost)."""
    value = rec.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise DataError(f"expected a string, got {type(value).__name__}", **where, field=key)
    return value


def _time(rec: Mapping[str, Any], where: dict[str, str]) -> int | float:
    """``t`` in Unix seconds (a number or a string of digits)."""
    value = rec.get("t")
    if value is None or value == "":
        raise DataError("required field is missing", **where, field="t")
    seconds = _seconds(value)
    if seconds is not None:
        return seconds
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise DataError(f"expected Unix seconds, got {str(value)[:40]!r}", **where, field="t")
    return value


def _seconds(value: Any) -> int | None:
    """Unix seconds written as a string of ASCII digits (``"²".isdigit()`` is true too, but
    ``int("²")`` fails); None for anything else, or for more digits than any time has."""
    if isinstance(value, str) and value.strip().isascii() and value.strip().isdigit() \
            and len(value.strip()) <= 18:
        return int(value)
    return None


def _profile(rec: Mapping[str, Any]) -> dict[str, Any]:
    """Profile fields under their canonical names; :func:`build_dataset` checks their types."""
    out = {name: rec.get(key) for name, key in PROFILE_KEYS.items()}
    # only m/f carry information; Weibo writes "n" (or nothing) for undisclosed
    if out["gender"] not in ("m", "f"):
        out["gender"] = None
    seconds = _seconds(out["created_at"])
    if seconds is not None:
        out["created_at"] = seconds
    return out
