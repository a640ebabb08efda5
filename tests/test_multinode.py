"""Several Ray nodes on one machine (tests/multinode.py runs each scenario in a subprocess on a
``ray.cluster_utils.Cluster``): a run's actors spread over three nodes and recorded; a node lost
mid-run; an unplaceable run; Ray Train's two workers on two nodes, one node lost after a
checkpoint (issue 41)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from mfray.store import RunStore

REPO = Path(__file__).resolve().parents[1]
VOLATILE = ("run_id", "latency_s")


@pytest.fixture
def ray_tmp() -> Iterator[str]:
    """A private Ray temp directory (short: Ray's socket paths must stay under 108 bytes)."""
    path = tempfile.mkdtemp(prefix="mfn", dir="/tmp")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _scenario(ray_tmp: str, *args: str | Path) -> tuple[dict, str]:
    env = os.environ | {"RAY_AUTH_MODE": "token", "RAY_TMPDIR": ray_tmp}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run([sys.executable, "-m", "tests.multinode", *map(str, args)], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=400, check=False)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1]), proc.stdout + proc.stderr


def _stable(store: RunStore) -> list[dict]:
    table = store.read_decisions()
    return table.drop_columns([c for c in VOLATILE if c in table.column_names]).to_pylist()


def test_a_run_spreads_over_three_nodes_and_outlives_losing_one(small_world_dir: Path,
                                                                 tmp_path: Path,
                                                                 ray_tmp: str) -> None:
    log, output = _scenario(ray_tmp, "simulate", small_world_dir, tmp_path)
    full, hit = RunStore.open(tmp_path / "full"), RunStore.open(tmp_path / "hit")
    placed = full.placement()
    assert {r["actor"] for r in placed} == {"meanfield", "shard-0", "shard-1", "shard-2",
                                            "model-0"}
    assert len({r["node_id"] for r in placed}) == 3  # every node holds a part of the run
    # the node of shard 1 was removed after round 3: the run rebuilt its actors elsewhere
    before = [r for r in hit.placement() if r["attempt"] == 0]
    after = [r for r in hit.placement() if r["attempt"] == 1]
    assert next(r["node_id"] for r in before if r["actor"] == "shard-1") == log["removed"]
    assert len(after) == 5 and log["removed"] not in {r["node_id"] for r in after}
    assert "rebuilding the run's actors from the store" in output
    assert hit.run_info()["status"] == "complete"
    assert _stable(hit) == _stable(full)  # the uninterrupted tables, none lost or changed
    cols = ["sim_id", "round", "meanfield_shares", "counts"]
    assert hit.read_rounds(columns=cols).to_pylist() == full.read_rounds(columns=cols).to_pylist()
    # no node with a CPU left: one clear line after resources.placement_timeout_s (3 s)
    assert "could not place 5 of the run's 5 actors" in log["unplaceable"]
    assert "lacks CPU (needs 1, 0 free of 0)" in log["unplaceable"]
    assert log["unplaceable_s"] < 30


def test_two_train_workers_on_two_nodes_resume_after_losing_one(small_world_dir: Path,
                                                                tiny_model_dir: Path,
                                                                tmp_path: Path,
                                                                ray_tmp: str) -> None:
    """Each node has one CPU and the head none, so the two workers (a CPU each) run on two
    nodes. One node is removed while the workers wait after the checkpoint of step 2."""
    pytest.importorskip("peft")
    log, output = _scenario(ray_tmp, "train", small_world_dir, tiny_model_dir, tmp_path)
    assert log["removed"]
    assert log["failed"].startswith("training failed: ") and "node" in log["failed"]
    assert "Run the same command again to resume" in log["failed"]
    assert log["failed_s"] < 120  # said once the node was gone, not after the two-minute wait
    assert "resuming from " + str(tmp_path / "lost" / "checkpoints" / "step-0000002") in output

    def history(run: str) -> list[dict]:
        return [json.loads(x) for x in (tmp_path / run / "metrics.jsonl").read_text()
                .splitlines()]

    full, lost = history("full"), history("lost")
    assert [r["step"] for r in lost] == [r["step"] for r in full] == [1, 2, 3, 4]
    assert [r["loss"] for r in lost] == [r["loss"] for r in full]  # identical, bit for bit
    assert (tmp_path / "lost" / "adapter" / "adapter_config.json").is_file()
