"""What a dataset is, by content: a run records it when it starts, and ``--resume`` refuses a
dataset that is not the one the run began with (re-converted with another topic rule, another
release, another directory of the same name), saying what differs.

A fingerprint holds, per table, its row count and a digest of each column's values, and the
label space. Digests are SHA-256 of the column's Arrow IPC bytes after its chunks are joined,
so the same values give the same digest however the table was read or chunked.
"""

from __future__ import annotations

import hashlib
from typing import Any

import pyarrow as pa

from mfray.data.schema import Dataset


def fingerprint(ds: Dataset) -> dict[str, Any]:
    """The dataset's fingerprint (plain JSON data)."""
    return {"label_space": {d: list(o) for d, o in ds.label_space.items()},
            "events": _table(ds.events), "posts": _table(ds.posts)}


def _table(table: pa.Table) -> dict[str, Any]:
    return {"rows": table.num_rows,
            "columns": {name: _digest(table.column(name)) for name in table.column_names}}


class _Hashing:
    """A write-only file that hashes what is written to it (no copy of a large column)."""

    def __init__(self) -> None:
        self.hash, self.closed = hashlib.sha256(), False

    def write(self, data: Any) -> int:
        self.hash.update(data)
        return len(memoryview(data))

    def writable(self) -> bool:
        return True

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True


def _digest(column: pa.ChunkedArray) -> str:
    """The SHA-256 of the column's Arrow IPC stream as one record batch."""
    one = pa.table({"c": column.combine_chunks()})
    sink = _Hashing()
    with pa.ipc.new_stream(pa.PythonFile(sink, mode="w"), one.schema) as writer:
        writer.write_table(one, max_chunksize=max(one.num_rows, 1))
    return sink.hash.hexdigest()[:32]


def differences(then: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """What differs between two fingerprints, in words (empty: the same data)."""
    out = []
    if then.get("label_space") != now.get("label_space"):
        out.append(f"the label space ({then.get('label_space')} then, "
                   f"{now.get('label_space')} now)")
    for table in ("events", "posts"):
        a, b = then.get(table, {}), now.get(table, {})
        if a.get("rows") != b.get("rows"):
            out.append(f"{table}: {a.get('rows')} rows then, {b.get('rows')} now")
        cols_a, cols_b = a.get("columns", {}), b.get("columns", {})
        changed = [c for c in cols_a if c in cols_b and cols_a[c] != cols_b[c]]
        gone, new = sorted(set(cols_a) - set(cols_b)), sorted(set(cols_b) - set(cols_a))
        if changed:
            out.append(f"{table}: the values of {', '.join(changed)}")
        if gone or new:
            out.append(f"{table}: columns {gone or '[]'} gone, {new or '[]'} new")
    return out
