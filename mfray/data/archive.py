"""Archives as input to ``mfray data convert``: ``.zip``, ``.tar``, ``.tar.gz``/``.tgz``,
``.tar.bz2``/``.tbz2`` and ``.tar.xz``/``.txz``.

An archive is unpacked member by member into a fresh temporary directory, never with
``extractall``: each member is checked before a byte is written, and the first bad one stops the
conversion with a :class:`DataError` that names it. Rejected are

* absolute names (``/x``, ``\\x``, ``C:x``), names with a ``..`` component (``/`` and ``\\``
  both count as separators) and any name whose resolved path leaves the directory;
* symbolic and hard links, devices, FIFOs and encrypted zip members (only files and folders);
* a name that appears twice, or is both a file and a folder;
* more than ``max_members`` members or more than ``max_bytes`` unpacked bytes (zip bombs).

macOS metadata (``__MACOSX/`` and ``._*`` AppleDouble files) is skipped. The loader then reads
the unpacked tree; an archive holding a single top-level entry is read as that entry, so
``re17.zip`` holding ``rumoureval2017-dev/`` converts exactly like the folder. Paths in the
loader's errors and in the dataset notes name the archive member (``re17.zip!/a/b.json``)
rather than the temporary directory, which is removed in every case.
"""

from __future__ import annotations

import dataclasses
import lzma
import os
import re
import shutil
import stat
import tarfile
import tempfile
import zipfile
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from mfray.data.schema import Dataset
from mfray.errors import DataError

MAX_BYTES = 20 * 2**30  # 20 GiB: far above every RumourEval / PHEME / rumdect release
MAX_MEMBERS = 2_000_000
ZIP_SUFFIXES = (".zip",)
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")
_CHUNK = 1 << 20
#: what a damaged or hostile archive raises from zipfile / tarfile and their decompressors
_READ_ERRORS = (OSError, EOFError, ValueError, RuntimeError, NotImplementedError, zlib.error,
                lzma.LZMAError, zipfile.BadZipFile, tarfile.TarError)
_DRIVE = re.compile(r"^[A-Za-z]:")


def is_archive(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a file whose name marks it as a supported archive."""
    p = Path(path)
    return p.is_file() and p.name.lower().endswith(ZIP_SUFFIXES + TAR_SUFFIXES)


def load_archive(path: str | os.PathLike[str], load: Callable[[Path], Dataset], *,
                 max_bytes: int = MAX_BYTES, max_members: int = MAX_MEMBERS) -> Dataset:
    """Unpack the archive at ``path`` (see the module docstring) and return ``load`` of the
    unpacked tree. A :class:`DataError` from ``load`` and the dataset's notes name archive
    members instead of temporary paths."""
    archive = Path(path)
    with extracted(archive, max_bytes=max_bytes, max_members=max_members) as (base, root):
        def relocate(text: str) -> str:
            for prefix in {str(base), os.path.realpath(base)}:
                text = text.replace(prefix + os.sep, f"{archive}!/").replace(prefix,
                                                                            f"{archive}!")
            return text

        try:
            ds = load(root)
        except DataError as exc:
            raise DataError(relocate(exc.detail),
                            file=None if exc.file is None else relocate(exc.file),
                            record=exc.record, field=exc.field) from None
        return dataclasses.replace(ds, notes=_map_strings(ds.notes, relocate))


@contextmanager
def extracted(path: Path, *, max_bytes: int = MAX_BYTES, max_members: int = MAX_MEMBERS
              ) -> Iterator[tuple[Path, Path]]:
    """Unpack ``path`` into a temporary directory, removed on exit; yields ``(base, root)``:
    the folder holding the members and what to read (its single entry, if it has one)."""
    name = path.name
    for suffix in sorted(ZIP_SUFFIXES + TAR_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suffix):
            name = name[:-len(suffix)]
            break
    tmp = Path(tempfile.mkdtemp(prefix="mfray-archive-"))
    try:
        # the folder keeps the archive's name: a flat RumourEval release's event is named by it
        base = tmp / (name if name and not name.startswith(".") else "archive")
        base.mkdir()
        budget = _Budget(path, max_bytes, max_members)
        if path.name.lower().endswith(ZIP_SUFFIXES):
            _unzip(path, base, budget)
        else:
            _untar(path, base, budget)
        entries = list(base.iterdir())
        if not entries:
            raise DataError("the archive holds no files", file=str(path))
        yield base, entries[0] if len(entries) == 1 else base
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


class _Budget:
    """Counts members and unpacked bytes against the limits."""

    def __init__(self, archive: Path, max_bytes: int, max_members: int) -> None:
        self.archive, self.max_bytes, self.max_members = archive, max_bytes, max_members
        self.bytes = self.members = 0

    def member(self) -> None:
        self.members += 1
        if self.members > self.max_members:
            raise DataError(f"more than {self.max_members:,} members: refused as a possible "
                            "archive bomb", file=str(self.archive))

    def add(self, n: int, name: str) -> None:
        """Count ``n`` more unpacked bytes of member ``name``; over the limit is an error."""
        if self.bytes + n > self.max_bytes:
            raise DataError(f"member {name!r}: the archive unpacks to more than "
                            f"{self.max_bytes:,} bytes: refused as a possible archive bomb",
                            file=str(self.archive))
        self.bytes += n


def _target(base: Path, name: str, archive: Path, *, is_dir: bool) -> Path | None:
    """Where member ``name`` goes under ``base``; None to skip it (macOS metadata, ``./``)."""
    def bad(why: str) -> DataError:
        return DataError(f"member {name!r}: {why}; nothing was converted", file=str(archive))

    if "\x00" in name:
        raise bad("a NUL byte in its name")
    posix = name.replace("\\", "/")  # archives made on Windows may use either separator
    if posix.startswith("/") or _DRIVE.match(posix):
        raise bad("an absolute path (members must be relative to the archive)")
    parts = [p for p in posix.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise bad("a '..' component, which could write outside the target directory")
    if not parts:
        if is_dir:
            return None  # "./", the archive's own root
        raise bad("an empty file name")
    if parts[0] == "__MACOSX" or parts[-1].startswith("._"):
        return None
    dest = base.joinpath(*parts)
    real_base = os.path.realpath(base)
    if os.path.commonpath([real_base, os.path.realpath(dest)]) != real_base:
        raise bad("it resolves outside the target directory")
    return dest


def _write(src: IO[bytes], dest: Path, name: str, budget: _Budget) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    with dest.open("xb") as out:  # "x": a second member of the same name is refused
        while chunk := src.read(_CHUNK):
            budget.add(len(chunk), name)
            out.write(chunk)


def _member_error(archive: Path, name: str, exc: BaseException) -> DataError:
    if isinstance(exc, FileExistsError | NotADirectoryError | IsADirectoryError):
        why = "appears twice, or as both a file and a folder"
    else:
        why = f"cannot be unpacked ({type(exc).__name__}: {exc})"
    return DataError(f"member {name!r} {why}; nothing was converted", file=str(archive))


def _open_zip(path: Path) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(path)
    except _READ_ERRORS as exc:
        raise DataError(f"not a readable zip archive ({exc})", file=str(path)) from None


def _open_tar(path: Path) -> tarfile.TarFile:
    try:
        return tarfile.open(path, "r:*")  # any compression: the name may not tell the truth
    except _READ_ERRORS as exc:
        raise DataError(f"not a readable tar archive ({exc})", file=str(path)) from None


def _unzip(path: Path, base: Path, budget: _Budget) -> None:
    with _open_zip(path) as zf:
        infos = zf.infolist()
        # refuse a bomb before unpacking any of it (the sizes are checked again while reading)
        declared = sum(i.file_size for i in infos)
        if len(infos) > budget.max_members or declared > budget.max_bytes:
            raise DataError(f"the archive declares {len(infos):,} members and {declared:,} "
                            f"unpacked bytes, more than the limits ({budget.max_members:,} "
                            f"members, {budget.max_bytes:,} bytes): refused as a possible "
                            "archive bomb", file=str(path))
        for info in infos:
            budget.member()
            name = info.filename
            mode = info.external_attr >> 16
            kind = stat.S_IFMT(mode) if info.create_system == 3 else 0  # 3: made on Unix
            # not info.is_dir(): it raises IndexError on an empty name (a name that was "\0")
            is_dir = name.endswith("/") or kind == stat.S_IFDIR
            dest = _target(base, name, path, is_dir=is_dir)
            if kind == stat.S_IFLNK:
                raise DataError(f"member {name!r}: a symbolic link; links are refused",
                                file=str(path))
            if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
                raise DataError(f"member {name!r}: not a regular file or folder",
                                file=str(path))
            if info.flag_bits & 0x1:
                raise DataError(f"member {name!r}: encrypted members cannot be read",
                                file=str(path))
            if dest is None:
                continue
            try:
                if is_dir:
                    dest.mkdir(parents=True, exist_ok=True)
                else:
                    with zf.open(info) as src:
                        _write(src, dest, name, budget)
            except _READ_ERRORS as exc:
                raise _member_error(path, name, exc) from None


def _untar(path: Path, base: Path, budget: _Budget) -> None:
    data_filter: Any = getattr(tarfile, "data_filter", None)  # Python >= 3.11.4
    with _open_tar(path) as tf:
        members = iter(tf)
        while True:
            try:
                member = next(members)
            except StopIteration:
                break
            except _READ_ERRORS as exc:
                raise DataError(f"damaged tar archive ({type(exc).__name__}: {exc}); nothing "
                                "was converted", file=str(path)) from None
            budget.member()
            name = member.name
            dest = _target(base, name, path, is_dir=member.isdir())
            if member.issym() or member.islnk():
                raise DataError(f"member {name!r}: a {'symbolic' if member.issym() else 'hard'}"
                                f" link to {member.linkname!r}; links are refused",
                                file=str(path))
            if not (member.isreg() or member.isdir()):
                raise DataError(f"member {name!r}: a device, FIFO or other special file; only "
                                "files and folders are unpacked", file=str(path))
            if data_filter is not None:
                try:  # the standard library's own safety checks, on top of the ones above
                    data_filter(member, str(base))
                except tarfile.FilterError as exc:
                    raise DataError(f"member {name!r}: refused by tarfile's data filter "
                                    f"({exc})", file=str(path)) from None
            if dest is None:
                continue
            try:
                if member.isdir():
                    dest.mkdir(parents=True, exist_ok=True)
                    continue
                if budget.bytes + member.size > budget.max_bytes:  # before reading any of it
                    budget.add(member.size, name)
                src = tf.extractfile(member)
                if src is None:
                    raise tarfile.ReadError("no data")
                with src:
                    _write(src, dest, name, budget)
            except _READ_ERRORS as exc:
                raise _member_error(path, name, exc) from None


def _map_strings(value: Any, fn: Callable[[str], str]) -> Any:
    """``value`` (JSON-like) with ``fn`` applied to every string in it."""
    if isinstance(value, str):
        return fn(value)
    if isinstance(value, dict):
        return {k: _map_strings(v, fn) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_map_strings(v, fn) for v in value]
    return value
