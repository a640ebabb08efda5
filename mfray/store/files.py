"""Low-level file operations of the store: atomic writes (a fsynced temporary sibling, then a
rename) and Parquet / JSON reading and writing. Every OSError becomes a StoreError that names the
path."""

from __future__ import annotations

import errno
import json
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from mfray.errors import StoreError

#: marks a temporary file; what a crash left behind is found by it on resume
TMP_MARK = ".tmp-"


@contextmanager
def os_errors(action: str, path: Path) -> Iterator[None]:
    """Turn an OSError inside the block into a StoreError: cannot ``action`` ``path``."""
    try:
        yield
    except OSError as exc:
        hint = " (disk full)" if exc.errno == errno.ENOSPC else ""
        raise StoreError(f"cannot {action} {path}: {exc.strerror or exc}{hint}") from exc


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _tmp_name(final: Path) -> Path:
    # a leading dot hides it from pyarrow / Ray directory scans; TMP_MARK finds it on resume
    return final.with_name(f".{final.name}{TMP_MARK}{os.getpid()}-{uuid.uuid4().hex[:8]}")


def write_tmp(final: Path, write: Any) -> Path:
    """Write through ``write(file)`` to a fsynced temporary sibling of ``final``; returns it."""
    with os_errors("create directory", final.parent):
        final.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(final)
    try:
        with os_errors("write", tmp), open(tmp, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        with suppress(OSError):  # a read-only disk must not hide the error that matters
            tmp.unlink(missing_ok=True)
        raise
    return tmp


def commit(tmp: Path, final: Path) -> None:
    """Rename a :func:`write_tmp` file into place and fsync its directory."""
    with os_errors("rename into place", final):
        os.replace(tmp, final)
        _fsync_dir(final.parent)


def write_atomic(final: Path, write: Any) -> None:
    """Write ``final`` through ``write(file)`` so that it is either complete or absent."""
    tmp = write_tmp(final, write)
    try:
        commit(tmp, final)
    except BaseException:
        with suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise


def parquet_writer(table: pa.Table) -> Any:
    """A ``write(file)`` for :func:`write_tmp` / :func:`write_atomic` that writes ``table``,
    with page checksums, so that a flipped byte is an error naming the file when it is read
    rather than a wrong number later."""
    return lambda fh: pq.write_table(table, fh, compression="zstd", write_page_checksum=True)


def read_parquet(path: Path, schema: pa.Schema | None = None, **kwargs: Any) -> pa.Table:
    """Read one file; a missing, truncated, foreign or corrupt file (a page whose checksum
    fails) is a StoreError naming it."""
    try:
        table = pq.read_table(path, partitioning=None, page_checksum_verification=True,
                              **kwargs)
    except (OSError, pa.ArrowException) as exc:
        raise StoreError(f"cannot read {path}: {exc} (the file is missing, truncated or "
                         "corrupt; the run directory is damaged)") from exc
    if schema is not None and not table.schema.equals(schema):
        raise StoreError(f"{path} does not have the declared schema:\n{table.schema}")
    # Parquet names list items "element" where Arrow says "item": restore the declared names
    return table if schema is None else table.cast(schema)


def to_json(value: Any, *, indent: int | None = None) -> str:
    """``value`` (a resolved config) as JSON text; what cannot be stored is a StoreError."""
    def plain(obj: Any) -> Any:  # the few non-JSON types a resolved config may hold
        if isinstance(obj, os.PathLike):
            return os.fspath(obj)
        if isinstance(obj, set | frozenset):
            return sorted(obj)
        raise TypeError(f"{type(obj).__name__} is not JSON-serialisable")

    try:
        return json.dumps(value, indent=indent, default=plain)
    except (TypeError, ValueError) as exc:
        raise StoreError(f"cannot store the config as JSON: {exc}") from exc
