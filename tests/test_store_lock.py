"""One writer per run directory (issue 41): a live writer's lock is refused with who holds
it, a dead writer's is taken over, another host's is refused with the file to remove."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from mfray.cli import main
from mfray.errors import StoreError
from mfray.store.lock import LOCK, RunLock


def _dead_pid() -> int:
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    return int(done.stdout)


def test_a_live_writer_is_refused_and_a_released_lock_is_free(tmp_path: Path) -> None:
    first = RunLock(tmp_path)
    first.acquire()
    held = json.loads((tmp_path / LOCK).read_text())
    assert held["pid"] > 0 and held["host"] == socket.gethostname() and held["since"]
    with pytest.raises(StoreError, match=rf"{tmp_path} is being written by process "
                                         rf"{held['pid']} on {held['host']} since"):
        RunLock(tmp_path).acquire()
    first.release()
    assert not (tmp_path / LOCK).exists()
    again = RunLock(tmp_path)
    again.acquire()
    again.release()


def test_a_dead_writer_s_lock_is_taken_over(tmp_path: Path,
                                            capsys: pytest.CaptureFixture) -> None:
    pid = _dead_pid()
    (tmp_path / LOCK).write_text(json.dumps({"pid": pid, "host": socket.gethostname(),
                                             "since": "2026-01-01T00:00:00+00:00"}))
    lock = RunLock(tmp_path)
    lock.acquire()
    assert f"taking over from process {pid}, which is gone" in capsys.readouterr().err
    assert json.loads((tmp_path / LOCK).read_text())["pid"] != pid
    lock.release()


def test_another_host_s_lock_is_refused_with_the_file_to_remove(tmp_path: Path) -> None:
    (tmp_path / LOCK).write_text(json.dumps({"pid": 1, "host": "elsewhere", "since": "x"}))
    with pytest.raises(StoreError, match=rf"on elsewhere since x: wait for it to end \(once "
                                         rf"it is gone, remove {tmp_path / LOCK}\)"):
        RunLock(tmp_path).acquire()


def test_a_resume_of_a_run_being_written_is_refused(
        small_world_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run = tmp_path / "run"
    assert main(["simulate", "--data", str(small_world_dir), "--out", str(run), "--variants",
                 "base-rate", "--set", "sim.warmup=32", "--max-rounds", "1"]) == 0
    assert not (run / LOCK).exists()  # released at the end
    writer = RunLock(run)
    writer.acquire()  # as if another mfray were writing it
    capsys.readouterr()
    assert main(["simulate", "--resume", str(run)]) == 2
    assert f"{run} is being written by process" in capsys.readouterr().err
    writer.release()
    assert main(["simulate", "--resume", str(run)]) == 0
