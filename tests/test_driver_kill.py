"""SIGKILL of the driver process mid-run, then the same command resumes: the final tables equal
an uninterrupted run's; the same for a training run and its last checkpoint."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import yaml

from mfray.config import load_config
from mfray.data.schema import read_dataset
from mfray.engine import simulate
from mfray.store import RunStore
from mfray.train.config import TrainConfig
from mfray.train.run import train

VOLATILE = ("run_id", "latency_s")


def _start(args: list[str], log: Path) -> subprocess.Popen:
    # its own session: the driver's local Ray processes can be cleaned up together afterwards
    return subprocess.Popen([sys.executable, "-m", "mfray.cli", *args], start_new_session=True,
                            stdout=log.open("w"), stderr=subprocess.STDOUT)


def _kill_driver_when(proc: subprocess.Popen, ready: Callable[[], bool], log: Path) -> None:
    deadline = time.monotonic() + 180
    while not ready():
        assert proc.poll() is None, f"finished before it could be killed:\n{log.read_text()}"
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)  # the driver only, as a crash would
    assert proc.wait(timeout=30) == -signal.SIGKILL
    try:  # then the Ray processes it had started, which a crashed driver leaves behind
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _stable(store: RunStore) -> list[dict]:
    table = store.read_decisions()
    return table.drop_columns([c for c in VOLATILE if c in table.column_names]).to_pylist()


def test_killed_driver_then_resume_gives_the_uninterrupted_tables(small_world_dir: Path,
                                                                  tmp_path: Path) -> None:
    overrides = [f"sim.data={small_world_dir}", "policy.model=scripted",
                 "sim.variants=[mf,recent,persistence]", "sim.seeds=[0]", "sim.round_size=1",
                 "sim.warmup=16", "resources.num_cpus=2"]
    run = tmp_path / "run"
    proc = _start(["simulate", "--out", str(run), *(f"--set={o}" for o in overrides)],
                  tmp_path / "killed.log")

    def some_rounds() -> bool:
        return (run / "runs.parquet").is_file() and \
            len(RunStore.open(run).completed_rounds()) >= 8

    _kill_driver_when(proc, some_rounds, tmp_path / "killed.log")
    store = RunStore.open(run)
    done = store.completed_rounds()
    assert store.run_info()["status"] == "running" and 8 <= len(done)
    first = {p: p.stat().st_mtime_ns for p in (run / "decisions" / "round=000000").iterdir()}
    resumed = subprocess.run([sys.executable, "-m", "mfray.cli", "simulate", "--resume",
                              str(run)], check=False, capture_output=True, text=True,
                             timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    cfg = load_config(None, overrides)
    straight = simulate(cfg, read_dataset(small_world_dir), tmp_path / "straight",
                        progress=False)
    store = RunStore.open(run)
    assert store.run_info()["status"] == "complete" and len(done) < len(store.completed_rounds())
    assert store.completed_rounds() == straight.completed_rounds()
    assert {p: p.stat().st_mtime_ns for p in first} == first  # kept, not simulated again
    assert _stable(store) == _stable(straight)
    cols = ["sim_id", "round", "meanfield_text", "counts"]
    assert store.read_rounds(columns=cols).to_pylist() == \
        straight.read_rounds(columns=cols).to_pylist()


def test_killed_training_resumes_from_its_last_checkpoint(small_world_dir: Path,
                                                          tiny_model_dir: Path,
                                                          tmp_path: Path,
                                                          capsys: pytest.CaptureFixture) -> None:
    pytest.importorskip("peft")
    cfg = {"sim": {"data": str(small_world_dir), "round_size": 16, "warmup": 32},
           "policy": {"model": str(tiny_model_dir)},
           "train": {"variant": "mf", "max_examples": 48, "batch_size": 4, "max_steps": 8,
                     "checkpoint_every": 2, "log_every": 1, "lr": 1e-3,
                     "max_prompt_tokens": 256, "warmup_ratio": 0.0},
           "resources": {"num_cpus": 2, "num_workers": 0}}
    (tmp_path / "train.yaml").write_text(yaml.safe_dump(cfg))
    args = ["train", "policy", "--config", str(tmp_path / "train.yaml")]
    out = tmp_path / "killed"
    proc = _start([*args, "--out", str(out)], tmp_path / "killed.log")
    _kill_driver_when(proc, lambda: any((out / "checkpoints").glob("step-0000004")),
                      tmp_path / "killed.log")
    assert not (out / "adapter").exists()  # it really died before the end
    # the same command resumes the killed run
    done = subprocess.run([sys.executable, "-m", "mfray.cli", *args, "--out", str(out)],
                          check=False, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    resumed_at = [line for line in done.stdout.splitlines() if line.startswith("resuming from")]
    assert resumed_at and "step-00000" in resumed_at[0]  # from a checkpoint, not from scratch
    history = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in history] == list(range(1, 9))
    # the reference, uninterrupted, in this process (the command's code path, without the
    # ~20 s of a new interpreter and Ray instance)
    capsys.readouterr()
    train(load_config(tmp_path / "train.yaml", [], cls=TrainConfig), "policy",
          tmp_path / "straight")
    assert "resuming" not in capsys.readouterr().out
    straight = [json.loads(x) for x in
                (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()]
    np.testing.assert_allclose([r["loss"] for r in history], [r["loss"] for r in straight],
                               rtol=1e-5)
