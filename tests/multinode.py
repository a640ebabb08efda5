"""Scenarios on a Ray cluster of several nodes on this machine, as Ray tests itself
(``ray.cluster_utils.Cluster``: a head and nodes, each its own raylet and object store).

Run by tests/test_multinode.py in a subprocess with a private ``RAY_TMPDIR``, so that neither the
test process's own Ray instance nor any other on the machine sees the cluster. Each scenario
prints one JSON line of what it observed; the test asserts on it and on the run directories.

    python -m tests.multinode simulate DATA OUT
    python -m tests.multinode train DATA MODEL OUT
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

#: a node that stops answering is declared dead within about a second (Ray's default: 15 s)
FAST_DEATH = {"health_check_initial_delay_ms": 0, "health_check_period_ms": 300,
              "health_check_failure_threshold": 3}


def slow_probs(prompt: str, options: Sequence[str]) -> np.ndarray:
    """A deterministic answer that takes a moment, so that a round lasts long enough to be
    hit (the same as tests/test_engine_recovery.py's)."""
    time.sleep(0.004)
    return np.linspace(1.0, 2.0, len(options)) + (len(prompt) % 7)


def start_cluster(nodes: int, cpus: int) -> Any:
    """A head without CPUs (it runs the driver; no actor or Train worker is placed there) and
    ``nodes`` nodes of ``cpus`` CPUs each."""
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True,
                      head_node_args={"num_cpus": 0, "_system_config": FAST_DEATH})
    for _ in range(nodes):
        cluster.add_node(num_cpus=cpus)
    settle(cluster.address, nodes, cpus)
    return cluster


def settle(address: str, nodes: int, cpus: int, timeout_s: float = 60) -> None:
    """Wait until the head's scheduler sees every node's CPUs (a node just added is known to
    the cluster a moment before the head's raylet places work there): ``nodes`` tasks of
    ``cpus`` CPUs at once must then run on ``nodes`` nodes. Connects and disconnects a driver."""
    import ray

    @ray.remote(num_cpus=cpus)
    def where() -> str:
        time.sleep(0.3)
        return ray.get_runtime_context().get_node_id()

    ray.init(address=address, log_to_driver=False)
    try:
        deadline = time.monotonic() + timeout_s
        while len(set(ray.get([where.remote() for _ in range(nodes)]))) < nodes:
            assert time.monotonic() < deadline, f"{nodes} nodes never took work at once"
    finally:
        ray.shutdown()


def remove_when(cluster: Any, ready: Callable[[], str | None], log: dict[str, Any],
                timeout_s: float = 300) -> threading.Thread:
    """A thread that removes (kills, no goodbye) the node whose id ``ready()`` returns, once it
    returns one; ``log["removed"]`` is the node's id."""
    def watch() -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            node_id = ready()
            if node_id:
                node = next(n for n in cluster.worker_nodes if n.node_id == node_id)
                cluster.remove_node(node, allow_graceful=False)
                log["removed"] = node_id
                return
            time.sleep(0.02)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def simulate_scenario(cluster: Any, data: Path, out: Path) -> dict[str, Any]:
    """An uninterrupted run on three nodes; the same run with the node of shard 1 removed after
    its third round; then, with no node left to place on, a run that must stop."""
    from mfray.config import PolicyConfig, ResourcesConfig, RunConfig, SimConfig
    from mfray.data.schema import read_dataset
    from mfray.engine import simulate
    from mfray.errors import MfrayError
    from mfray.llm import ScriptedModel
    from mfray.store import RunStore

    log: dict[str, Any] = {"address": cluster.address}
    cfg = RunConfig(sim=SimConfig(data=str(data), variants=("mf", "recent", "persistence"),
                                  seeds=(0,), round_size=8, warmup=16),
                    policy=PolicyConfig(model="scripted"),
                    resources=ResourcesConfig(address=cluster.address, num_shards=3,
                                              placement_timeout_s=3))
    ds = read_dataset(data)
    simulate(cfg, ds, out / "full", progress=False, model=ScriptedModel(slow_probs))

    def shard_1_node() -> str | None:
        if not (out / "hit" / "placement.jsonl").is_file():
            return None
        store = RunStore.open(out / "hit")
        if len(store.completed_rounds()) < 3:
            return None
        return next(r["node_id"] for r in store.placement() if r["actor"] == "shard-1")

    watcher = remove_when(cluster, shard_1_node, log)
    simulate(cfg, ds, out / "hit", progress=False, model=ScriptedModel(slow_probs))
    watcher.join()
    for node in list(cluster.worker_nodes):  # nothing left to place an actor on
        cluster.remove_node(node)
    t0 = time.monotonic()
    try:
        simulate(cfg, ds, out / "none", progress=False, model=ScriptedModel(slow_probs))
    except MfrayError as exc:
        log["unplaceable"] = str(exc)
    log["unplaceable_s"] = time.monotonic() - t0
    return log


def train_scenario(cluster: Any, data: Path, model: Path, out: Path) -> dict[str, Any]:
    """Two Ray Train workers, one per node: an uninterrupted run; the same run with one node
    removed after the checkpoint of step 2 (the workers hold there until it is gone); the
    rerun on a node added in its place."""
    from mfray.config import MeanFieldConfig, PolicyConfig, SimConfig
    from mfray.errors import MfrayError
    from mfray.train.config import TrainConfig, TrainParams, TrainResources
    from mfray.train.run import train

    log: dict[str, Any] = {}
    cfg = TrainConfig(
        sim=SimConfig(data=str(data), round_size=16, warmup=32),
        policy=PolicyConfig(model=str(model)), meanfield=MeanFieldConfig(max_new_tokens=8),
        train=TrainParams(variant="mf", max_examples=24, batch_size=4, max_steps=4,
                          checkpoint_every=2, log_every=1, lr=1e-3, max_prompt_tokens=256,
                          warmup_ratio=0.0),
        resources=TrainResources(address=cluster.address, num_workers=2))
    train(cfg, "policy", out / "full", num_threads=1)
    nodes = sorted(n.node_id for n in cluster.worker_nodes)

    def checkpointed() -> str | None:
        return nodes[1] if (out / "lost" / "checkpoints" / "step-0000002").is_dir() else None

    watcher = remove_when(cluster, checkpointed, log)
    t0 = time.monotonic()
    try:
        train(cfg, "policy", out / "lost", num_threads=1, hold_at_step=2)
    except MfrayError as exc:
        log["failed"] = str(exc)
    log["failed_s"] = time.monotonic() - t0
    watcher.join()
    cluster.add_node(num_cpus=1)  # the replacement node
    train(cfg, "policy", out / "lost", num_threads=1)
    return log


def main(argv: list[str]) -> None:
    import ray

    scenario, *paths = argv
    # the run's five actors on three nodes of two CPUs (a node's CPU is taken while an actor
    # starts there, and a node without one free is passed over); Train's two one-CPU workers
    # on two nodes of one CPU
    run, nodes, cpus = {"simulate": (simulate_scenario, 3, 2),
                        "train": (train_scenario, 2, 1)}[scenario]
    cluster = start_cluster(nodes, cpus)
    try:
        log = run(cluster, *map(Path, paths))
    finally:
        ray.shutdown()
        cluster.shutdown()
    print(json.dumps(log), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
