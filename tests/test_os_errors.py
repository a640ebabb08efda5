"""OS errors on the write paths (issue 41): one ``mfray: error:`` line naming the path, at
once, and never hidden by a failing clean-up."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mfray.cli import main
from mfray.errors import StoreError
from mfray.store import RunStore

RUN = ["--variants", "base-rate", "--set", "sim.warmup=32"]


def _read_only(monkeypatch: pytest.MonkeyPatch, where: Path) -> None:
    """Writes under ``where`` fail as on a read-only file system (root ignores chmod)."""
    real_open, real_replace = os.open, os.replace

    def refuse(path: object) -> None:
        if str(path).startswith(str(where)):
            raise OSError(errno.EROFS, "Read-only file system", str(path))

    def fake_open(path, flags, *args, **kwargs):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            refuse(path)
        return real_open(path, flags, *args, **kwargs)

    def fake_replace(src, dst, *args, **kwargs):
        refuse(dst)
        return real_replace(src, dst, *args, **kwargs)

    def fake_unlink(self: Path, missing_ok: bool = False) -> None:
        refuse(self)

    monkeypatch.setattr(os, "open", fake_open)
    monkeypatch.setattr(os, "replace", fake_replace)
    monkeypatch.setattr(Path, "unlink", fake_unlink)
    monkeypatch.setattr(Path, "write_bytes", lambda self, data: refuse(self))


def test_a_read_only_run_is_refused_before_anything_slow(
        small_world_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture) -> None:
    run = tmp_path / "run"
    assert main(["simulate", "--data", str(small_world_dir), "--out", str(run), *RUN,
                 "--max-rounds", "1"]) == 0
    capsys.readouterr()
    _read_only(monkeypatch, run)
    assert main(["simulate", "--resume", str(run)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 2 and "mfray: error: cannot write into the run directory " \
        f"{run}: Read-only file system" in err  # after the status line, one error line


def test_a_failing_clean_up_does_not_hide_the_error(
        small_world_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = tmp_path / "run"
    assert main(["simulate", "--data", str(small_world_dir), "--out", str(run), *RUN,
                 "--max-rounds", "1"]) == 0
    store = RunStore.open(run)
    rows = store.read_decisions().to_pylist(), store.read_rounds().to_pylist()
    for r in rows[0] + rows[1]:
        r["round"] = 1
    _read_only(monkeypatch, run / "decisions" / "round=000001")
    with pytest.raises(StoreError, match="cannot rename into place .*Read-only file system"):
        store.write_round(1, *rows)


def test_os_errors_of_commands_are_one_line(tmp_path: Path) -> None:
    fixture = Path(__file__).parent / "fixtures" / "rumoureval" / "reddit2019"
    done = subprocess.run([sys.executable, "-m", "mfray.cli", "data", "convert", str(fixture),
                           "--format", "rumoureval", "--out", "/dev/null/ds"],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 2
    assert done.stderr.startswith("mfray: error: ") and "/dev/null" in done.stderr
    assert "Traceback" not in done.stderr and done.stderr.count("\n") == 1


def test_a_reader_that_leaves_early_ends_the_output_quietly(small_world_dir: Path) -> None:
    """``mfray data info DIR | head``: a reader gone before the output is written (here one
    that reads nothing) ends it quietly, not with a BrokenPipeError traceback."""
    done = subprocess.run(f"{sys.executable} -m mfray.cli data info {small_world_dir} | true; "
                          "exit ${PIPESTATUS[0]}", shell=True, executable="/bin/bash",
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode in (0, 141), done.stderr  # 141: stopped by the closed pipe
    assert "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr
