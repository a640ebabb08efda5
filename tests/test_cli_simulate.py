"""The first seconds of ``mfray simulate``: a bad --out is refused at once, before Ray and the
data; a status line comes before anything slow; an old run directory still resumes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mfray.cli import main
from mfray.store import RunStore

REPO = Path(__file__).resolve().parents[1]


def _simulate(*args: str) -> tuple[subprocess.CompletedProcess, float]:
    """``mfray simulate ARGS`` in a fresh interpreter that reports whether Ray or torch were
    imported: (the process, its seconds)."""
    script = ("import sys\nfrom mfray.cli import main\ncode = main(sys.argv[1:])\n"
              "print('heavy:', sorted(m for m in ('ray', 'torch', 'transformers') "
              "if m in sys.modules))\nsys.exit(code)\n")
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", script, "simulate", *args], text=True,
                          capture_output=True, timeout=120, check=False,
                          env=os.environ | {"PYTHONPATH": str(REPO)})
    return done, time.perf_counter() - t0


def test_an_unwritable_out_is_refused_within_two_seconds(tmp_path: Path) -> None:
    done, seconds = _simulate("--data", str(tmp_path / "X"), "--out", "/proc/x")
    assert done.returncode == 2
    assert done.stderr.startswith("mfray: error: --out /proc/x: cannot write in /proc")
    assert "heavy: []" in done.stdout  # nothing slow was even imported
    assert seconds < 2, f"{seconds:.1f} s"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only directory")
def test_a_read_only_parent_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    parent = tmp_path / "ro"
    parent.mkdir(mode=0o555)
    assert main(["simulate", "--data", "X", "--out", str(parent / "run")]) == 2
    assert f"cannot write in {parent}" in capsys.readouterr().err


def test_an_existing_out_is_refused_at_once(small_world_dir: Path, tmp_path: Path,
                                            capsys: pytest.CaptureFixture) -> None:
    full = tmp_path / "full"
    full.mkdir()
    (full / "notes.txt").write_text("mine")
    assert main(["simulate", "--data", str(small_world_dir), "--out", str(full)]) == 2
    err = capsys.readouterr().err
    assert err == (f"mfray: error: --out {full} exists and is not empty; choose another output "
                   "directory\n")  # one line, and no status line before it
    assert main(["simulate", "--data", str(small_world_dir), "--out",
                 str(full / "notes.txt")]) == 2
    assert "exists and is not a directory" in capsys.readouterr().err
    assert main(["simulate", "--data", str(small_world_dir)]) == 2
    assert "simulate needs --out RUN_DIR" in capsys.readouterr().err
    assert (full / "notes.txt").read_text() == "mine"


def test_a_status_line_comes_before_the_data_is_read(tmp_path: Path) -> None:
    done, seconds = _simulate("--data", str(tmp_path / "no-data"), "--out",
                              str(tmp_path / "run"), "--variants", "base-rate")
    assert done.returncode == 2 and seconds < 10
    first, second = done.stderr.splitlines()[:2]
    assert first == f"mfray simulate: {tmp_path / 'run'}: reading the config and the data"
    assert second.startswith("mfray: error: ") and "no-data" in second
    assert not (tmp_path / "run").exists()


def test_an_old_run_directory_resumes(small_world_dir: Path, tmp_path: Path,
                                      capsys: pytest.CaptureFixture) -> None:
    """A run stored by an older mfray (hardware keys in policy) resumes: the keys move to
    resources, and the resumed config compares equal to the stored one."""
    run = tmp_path / "run"
    assert main(["simulate", "--data", str(small_world_dir), "--out", str(run), "--variants",
                 "base-rate", "--set", "sim.warmup=32", "--set", "resources.chunk=64",
                 "--max-rounds", "1"]) == 0
    stored = json.loads((run / "config.json").read_text())
    for key in ("chunk", "batch_size", "device"):  # as an older mfray wrote them
        stored["policy"][key] = stored["resources"].pop(key)
    (run / "config.json").write_text(json.dumps(stored))
    assert main(["simulate", "--resume", str(run)]) == 0
    assert RunStore.open(run).run_info()["status"] == "complete"
    stored["policy"]["no_such_key"] = 1
    (run / "config.json").write_text(json.dumps(stored))
    assert main(["simulate", "--resume", str(run)]) == 2
    err = capsys.readouterr().err
    assert f"{run / 'config.json'}: a config this mfray cannot read (unknown key " \
           "policy.no_such_key" in err and "To migrate it, edit it" in err
