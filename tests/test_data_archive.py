"""Archives as input to ``mfray data convert``: good archives convert exactly like the folder;
hostile ones (path traversal, links, special files, bombs) are refused before anything leaves
the temporary directory, with a clear error, and no output dataset is created."""

from __future__ import annotations

import io
import shutil
import stat
import tarfile
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from mfray.cli import main
from mfray.data.archive import load_archive
from mfray.data.jsonl import load_jsonl
from mfray.data.rumoureval import load_rumoureval
from mfray.data.schema import read_dataset
from mfray.errors import DataError

FIXTURES = Path(__file__).resolve().parent / "fixtures"
TRAINDEV = FIXTURES / "rumoureval" / "traindev2017"
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def private_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Archives unpack into a temporary directory of their own; every test checks that it is
    empty afterwards (cleaned on success and on every error)."""
    where = tmp_path / "system-tmp"
    where.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(where))
    yield where
    assert list(where.iterdir()) == []


def _files(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` by its path relative to ``root.parent`` (so the top folder is
    the archive's single top-level entry)."""
    return {p.relative_to(root.parent).as_posix(): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(zipfile.ZipInfo(name), data)
    return path


def _tar(path: Path, members: list[tarfile.TarInfo | tuple[str, bytes]], mode: str = "w:gz"
         ) -> Path:
    with tarfile.open(path, mode) as tf:
        for m in members:
            if isinstance(m, tarfile.TarInfo):
                tf.addfile(m)
            else:
                info = tarfile.TarInfo(m[0])
                info.size = len(m[1])
                tf.addfile(info, io.BytesIO(m[1]))
    return path


def _special(name: str, kind: bytes, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, linkname
    return info


def _convert(src: Path, fmt: str, out: Path, capsys: pytest.CaptureFixture[str]
             ) -> tuple[int, str]:
    code = main(["data", "convert", str(src), "--format", fmt, "--out", str(out)])
    return code, capsys.readouterr().err


# --------------------------------------------------------------------------------------------
# good archives


@pytest.mark.parametrize("suffix", [".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz"])
def test_archive_converts_like_the_folder(tmp_path: Path, suffix: str,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    members = _files(TRAINDEV)
    archive = tmp_path / f"release{suffix}"
    if suffix == ".zip":
        _zip(archive, members)
    else:
        mode = {".tar": "w", ".tar.gz": "w:gz", ".tgz": "w:gz", ".tar.bz2": "w:bz2",
                ".tar.xz": "w:xz"}[suffix]
        _tar(archive, list(members.items()), mode)
    assert main(["data", "convert", str(TRAINDEV), "--format", "rumoureval",
                 "--out", str(tmp_path / "from-dir")]) == 0
    code, err = _convert(archive, "rumoureval", tmp_path / "from-archive", capsys)
    assert code == 0, err
    a, b = read_dataset(tmp_path / "from-dir"), read_dataset(tmp_path / "from-archive")
    assert a.events.equals(b.events) and a.posts.equals(b.posts)
    assert (a.name, a.label_space) == (b.name, b.label_space)
    # the notes name archive members, never the temporary directory
    assert b.notes["root"] == f"{archive}!/traindev2017"
    assert all(f.startswith(f"{archive}!/traindev2017/traindev/")
               for f in b.notes["label_files"])


def test_archive_without_a_top_folder_and_with_macos_metadata(tmp_path: Path) -> None:
    members = {k.removeprefix("traindev2017/"): v for k, v in _files(TRAINDEV).items()}
    members["__MACOSX/rumoureval-data/._eventa"] = b"\x00\x05\x16\x07"
    members["rumoureval-data/eventa/100/source-tweet/._100.json"] = b"\x00\x05\x16\x07"
    archive = _zip(tmp_path / "flat.zip", members)
    a, b = load_rumoureval(TRAINDEV), load_archive(archive, load_rumoureval)
    assert a.events.equals(b.events) and a.posts.equals(b.posts)
    assert b.notes["root"] == f"{archive}!"


def test_single_file_archive_for_jsonl(tmp_path: Path) -> None:
    small = FIXTURES / "jsonl" / "small.jsonl"
    archive = _tar(tmp_path / "small.tar.xz", [("small.jsonl", small.read_bytes())], "w:xz")
    a, b = load_jsonl(small), load_archive(archive, load_jsonl)
    assert a.events.equals(b.events) and a.posts.equals(b.posts) and a.notes == b.notes


def test_rumdect_folder_in_a_zip(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    archive = _zip(tmp_path / "weibo.zip", _files(FIXTURES / "rumdect"))
    code, err = _convert(archive, "rumdect", tmp_path / "out", capsys)
    assert code == 0, err
    assert read_dataset(tmp_path / "out").events.num_rows == 2


def test_loader_errors_name_the_member_not_the_temporary_folder(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    members = _files(TRAINDEV)
    members["traindev2017/rumoureval-data/eventb/300/replies/301.json"] = b'{"id_str": '
    archive = _zip(tmp_path / "broken.zip", members)
    code, err = _convert(archive, "rumoureval", tmp_path / "out", capsys)
    assert code == 2 and not (tmp_path / "out").exists()
    assert err.startswith(f"mfray: error: {archive}!/traindev2017/rumoureval-data/eventb/300/"
                          "replies/301.json: record 301: field 'json': broken JSON")
    assert "mfray-archive-" not in err


# --------------------------------------------------------------------------------------------
# hostile archives

GOOD = ("good/structure.json", b"{}")  # unpacked before the bad member: cleaned up too
ZIP_ATTACKS = {
    "dotdot": ("../evil", "'..' component"),
    "absolute": ("/abs/evil", "absolute path"),
    "backslashes": ("..\\..\\x", "'..' component"),
    "inner-dotdot": ("a/../../x", "'..' component"),
    "drive": ("C:\\evil", "absolute path"),
}


@pytest.mark.parametrize("attack", sorted(ZIP_ATTACKS))
def test_zip_traversal_is_refused(tmp_path: Path, attack: str,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    name, why = ZIP_ATTACKS[attack]
    work = tmp_path / "work"
    work.mkdir()
    archive = _zip(work / "evil.zip", {GOOD[0]: GOOD[1], name: b"pwned"})
    code, err = _convert(archive, "rumoureval", work / "out", capsys)
    assert code == 2
    assert err.startswith(f"mfray: error: {archive}: member {name!r}: ") and why in err
    assert sorted(p.name for p in work.iterdir()) == ["evil.zip"]  # no output, nothing beside
    assert not (tmp_path / "evil").exists() and not (tmp_path / "x").exists()
    assert not Path("/abs/evil").exists()


def test_zip_symlink_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    archive = tmp_path / "link.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr(*GOOD)
        info = zipfile.ZipInfo("etc")
        info.create_system, info.external_attr = 3, (stat.S_IFLNK | 0o777) << 16
        zf.writestr(info, "/etc")
    code, err = _convert(archive, "rumoureval", tmp_path / "out", capsys)
    assert code == 2 and "member 'etc': a symbolic link" in err
    assert not (tmp_path / "out").exists()


def test_encrypted_zip_member_is_refused(tmp_path: Path) -> None:
    archive = _zip(tmp_path / "locked.zip", {"a/structure.json": b"{}"})
    raw = bytearray(archive.read_bytes())
    central = raw.index(b"PK\x01\x02")
    raw[central + 8] |= 0x1  # the "encrypted" bit of the member's general purpose flags
    archive.write_bytes(bytes(raw))
    with pytest.raises(DataError, match="'a/structure.json': encrypted members cannot be read"):
        load_archive(archive, load_rumoureval)


TAR_ATTACKS = {
    "dotdot": ([GOOD, ("../evil", b"pwned")], "'..' component"),
    "absolute": ([GOOD, ("/abs/evil", b"pwned")], "absolute path"),
    "symlink-to-etc": ([GOOD, _special("etc", tarfile.SYMTYPE, "/etc"), ("etc/passwd", b"x")],
                       "a symbolic link to '/etc'"),
    "symlink-inside": ([GOOD, _special("alias", tarfile.SYMTYPE, "good")],
                       "a symbolic link to 'good'"),
    "hardlink-out": ([GOOD, _special("passwd", tarfile.LNKTYPE, "../../../etc/passwd")],
                     "a hard link to '../../../etc/passwd'"),
    "hardlink-absolute": ([GOOD, _special("shadow", tarfile.LNKTYPE, "/etc/shadow")],
                          "a hard link"),
    "device": ([GOOD, _special("tty", tarfile.CHRTYPE)], "a device, FIFO"),
    "fifo": ([GOOD, _special("pipe", tarfile.FIFOTYPE)], "a device, FIFO"),
}


@pytest.mark.parametrize("attack", sorted(TAR_ATTACKS))
def test_tar_attacks_are_refused(tmp_path: Path, attack: str,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    members, why = TAR_ATTACKS[attack]
    work = tmp_path / "work"
    work.mkdir()
    archive = _tar(work / "evil.tar.gz", members)
    code, err = _convert(archive, "rumoureval", work / "out", capsys)
    assert code == 2, err
    assert err.startswith(f"mfray: error: {archive}: member ") and why in err
    assert err.count("\n") == 1  # one line, no traceback
    assert sorted(p.name for p in work.iterdir()) == ["evil.tar.gz"]
    assert not (tmp_path / "evil").exists() and not Path("/abs/evil").exists()


def test_duplicate_and_conflicting_members_are_refused(tmp_path: Path) -> None:
    twice = _tar(tmp_path / "twice.tar", [GOOD, GOOD], "w")
    with pytest.raises(DataError, match="'good/structure.json' appears twice"):
        load_archive(twice, load_rumoureval)
    both = _tar(tmp_path / "both.tar", [("a", b"1"), ("a/b", b"2")], "w")
    with pytest.raises(DataError, match="member 'a/b' appears twice, or as both"):
        load_archive(both, load_rumoureval)


def test_bombs_are_refused(tmp_path: Path) -> None:
    big = {"bomb/zeros.json": b"\x00" * 100_000}
    with pytest.raises(DataError, match="declares 1 members and 100,000 unpacked bytes"):
        load_archive(_zip(tmp_path / "b.zip", big), load_rumoureval, max_bytes=10_000)
    with pytest.raises(DataError, match="unpacks to more than 10,000 bytes"):
        load_archive(_tar(tmp_path / "b.tgz", list(big.items())), load_rumoureval,
                     max_bytes=10_000)
    many = [(f"m/{i}.json", b"{}") for i in range(20)]
    with pytest.raises(DataError, match="more than 10 members"):
        load_archive(_tar(tmp_path / "m.tgz", many), load_rumoureval, max_members=10)
    with pytest.raises(DataError, match="declares 20 members"):
        load_archive(_zip(tmp_path / "m.zip", dict(many)), load_rumoureval, max_members=10)


def test_damaged_archives_give_a_clean_error(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    good = _tar(tmp_path / "good.tar.gz", list(_files(TRAINDEV).items()))
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(good.read_bytes()[:len(good.read_bytes()) // 2])
    (tmp_path / "junk.zip").write_bytes(b"PK\x03\x04 this is not a zip")
    (tmp_path / "empty.tar").write_bytes(b"")
    for name in ("cut.tar.gz", "junk.zip", "empty.tar"):
        code, err = _convert(tmp_path / name, "rumoureval", tmp_path / "out", capsys)
        assert code == 2 and err.startswith(f"mfray: error: {tmp_path / name}: "), err
        assert not (tmp_path / "out").exists()


def test_the_library_never_calls_extractall() -> None:
    hits = [p for p in (REPO / "mfray").rglob("*.py") if ".extractall(" in p.read_text()]
    assert hits == []


def test_a_folder_named_like_an_archive_is_read_as_a_folder(tmp_path: Path) -> None:
    folder = tmp_path / "release.zip"
    shutil.copytree(TRAINDEV, folder)
    assert main(["data", "convert", str(folder), "--format", "rumoureval",
                 "--out", str(tmp_path / "out")]) == 0
