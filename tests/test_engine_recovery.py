"""Losing an actor mid-run: the run rebuilds its actors from the store and ends with exactly
the rows of an uninterrupted run (issue: reliability)."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import psutil
import pytest

from mfray.config import PolicyConfig, ResourcesConfig, RunConfig, SimConfig
from mfray.data.schema import read_dataset
from mfray.engine import simulate
from mfray.llm import ScriptedModel
from mfray.store import RunStore

VOLATILE = ("run_id", "latency_s")


def slow_probs(prompt: str, options: Sequence[str]) -> np.ndarray:
    """A deterministic answer that takes a moment, so a round lasts long enough to be hit."""
    time.sleep(0.004)
    return np.linspace(1.0, 2.0, len(options)) + (len(prompt) % 7)


def _cfg(data: Path, shards: int) -> RunConfig:
    return RunConfig(sim=SimConfig(data=str(data), variants=("mf", "recent", "persistence"),
                                   seeds=(0,), round_size=8, warmup=16),
                     policy=PolicyConfig(model="scripted"),
                     resources=ResourcesConfig(num_shards=shards, num_cpus=2))


def _stable(store: RunStore) -> list[dict]:
    table = store.read_decisions()
    return table.drop_columns([c for c in VOLATILE if c in table.column_names]).to_pylist()


def _kill_when(run_dir: Path, after_rounds: int, title: str, killed: list[int]) -> None:
    """SIGKILL this session's actor process whose title starts with ``title`` once the run has
    ``after_rounds`` complete rounds (only our own descendants: other Ray sessions may run)."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        store = run_dir / "runs.parquet"
        if store.is_file() and len(RunStore.open(run_dir).completed_rounds()) >= after_rounds:
            for proc in psutil.Process().children(recursive=True):
                try:
                    if " ".join(proc.cmdline()).startswith(title):
                        proc.send_signal(signal.SIGKILL)
                        killed.append(proc.pid)
                        return
                except psutil.Error:
                    continue
        time.sleep(0.02)


@pytest.fixture(scope="module")
def uninterrupted(small_world_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> RunStore:
    """The run each killed one must end equal to (simulated once for the three kills)."""
    return simulate(_cfg(small_world_dir, 2), read_dataset(small_world_dir),
                    tmp_path_factory.mktemp("recovery") / "full", progress=False,
                    model=ScriptedModel(slow_probs))


@pytest.mark.parametrize("title", ["ray::AgentShard", "ray::Population",
                                   "ray::InferenceServer"])
def test_a_killed_actor_is_rebuilt_and_nothing_is_lost(title: str, small_world_dir: Path,
                                                       uninterrupted: RunStore, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture) -> None:
    ds = read_dataset(small_world_dir)
    model = ScriptedModel(slow_probs)
    full = uninterrupted
    killed: list[int] = []
    killer = threading.Thread(target=_kill_when, args=(tmp_path / "hit", 3, title, killed))
    killer.start()
    hit = simulate(_cfg(small_world_dir, 2), ds, tmp_path / "hit", progress=False, model=model)
    killer.join()
    assert killed, f"no {title} process was found to kill"
    assert not psutil.pid_exists(killed[0]) or psutil.Process(killed[0]).status() == "zombie"
    assert "rebuilding the run's actors from the store" in capsys.readouterr().err
    assert hit.run_info()["status"] == "complete"
    assert hit.completed_rounds() == full.completed_rounds()
    rows = _stable(hit)
    assert len(rows) == len({(r["sim_id"], r["agent_index"]) for r in rows})  # no duplicate
    assert rows == _stable(full)  # none lost, none changed
    cols = ["sim_id", "round", "meanfield_text", "meanfield_shares", "counts"]
    assert hit.read_rounds(columns=cols).to_pylist() == full.read_rounds(columns=cols).to_pylist()


def test_a_damaged_round_is_simulated_again_on_resume(small_world_dir: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture) -> None:
    ds = read_dataset(small_world_dir)
    full = simulate(_cfg(small_world_dir, 1), ds, tmp_path / "full", progress=False)
    part = simulate(_cfg(small_world_dir, 1), ds, tmp_path / "part", progress=False,
                    max_rounds=6)
    target = part.run_dir / "decisions" / "round=000003" / "part-0.parquet"
    target.write_bytes(target.read_bytes()[:-100])  # the footer is gone
    resumed = simulate(_cfg(small_world_dir, 1), ds, tmp_path / "part", progress=False,
                       resume=True)
    assert "round 3 of" in capsys.readouterr().err
    assert resumed.run_info()["status"] == "complete"
    assert _stable(resumed) == _stable(full)
