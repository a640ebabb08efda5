"""Where a run's actors run: spread over the cluster's nodes, waited for with a deadline, and
recorded in the run.

The run's actors (the mean field, the agent shards, the models) go round the cluster's nodes
that can take them, one after the other: on a cluster of several nodes the shards and model
replicas use them all, and a lost node takes a part of the run, not all of it. Placement that cannot happen (the
cluster's CPUs, or GPUs, are all held by other work) is said on the console after
:data:`WARN_AFTER_S` and stops the run after ``resources.placement_timeout_s``, naming the
resource; an actor that was placed and is still starting (a model loading) is waited for.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from typing import Any

from mfray.errors import MfrayError

#: seconds after which a run waiting for room on the cluster says so
WARN_AFTER_S = 10.0
#: seconds between two looks at the cluster's free resources while waiting
POLL_S = 1.0


class Placed:
    """Mixin of the run's actor classes: :meth:`placement` says where the actor runs."""

    def placement(self) -> dict[str, Any]:
        import ray

        return {"node_id": ray.get_runtime_context().get_node_id(),
                "node_ip": ray.util.get_node_ip_address(), "pid": os.getpid()}


class PlacementTimeout(MfrayError):
    """The cluster had no room for the run's actors within ``resources.placement_timeout_s``."""


def spread(cls: type, node: str | None = None, **options: Any) -> Any:
    """``cls`` as a Ray actor class placed on ``node`` where it has room (else where Ray finds
    room: a soft affinity), or by Ray's ``SPREAD`` strategy without one. An explicit strategy
    also keeps the actor out of the placement group of a Ray Tune trial or a Train worker that
    starts the run (which would otherwise capture it and have no room for it)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    strategy = NodeAffinitySchedulingStrategy(node, soft=True) if node else "SPREAD"
    return ray.remote(cls).options(scheduling_strategy=strategy, **options)


def nodes_with(resource: str) -> list[str]:
    """The ids of the cluster's live nodes with at least one ``resource`` (CPU, GPU), in a
    fixed order. Actor ``k`` of a kind goes to node ``k mod len``: Ray's own ``SPREAD`` is best
    effort (here five actors on three idle nodes often took two)."""
    import ray

    return sorted(n["NodeID"] for n in ray.nodes()
                  if n.get("Alive") and n.get("Resources", {}).get(resource, 0) >= 1)


def nth(nodes: list[str], k: int) -> str | None:
    """Node ``k`` of ``nodes`` round the list; None (Ray's choice) where there is none."""
    return nodes[k % len(nodes)] if nodes else None


def short_of(needs: Mapping[str, float], free: Mapping[str, float]) -> dict[str, float]:
    """The resources of ``needs`` (one actor's) that ``free`` (the cluster's) lacks, with how
    much is free of each."""
    return {k: free.get(k, 0.0) for k, v in needs.items() if free.get(k, 0.0) < v}


def wait_placed(actors: Mapping[str, Any], needs: Mapping[str, Mapping[str, float]],
                timeout_s: float, say: Callable[[str], None]) -> dict[str, Any]:
    """Ask each of ``actors`` (by name) where it runs and wait for the answers. ``needs``
    gives an actor's resources by name (default: one CPU, Ray's need to place an actor).
    While some are unanswered and the cluster lacks what they need, say so once after
    :data:`WARN_AFTER_S`, and raise :class:`PlacementTimeout` after ``timeout_s``. Returns
    the answers' object refs by name (``ray.get`` them: an actor's own error surfaces there)."""
    import ray

    refs = {name: a.placement.remote() for name, a in actors.items()}
    pending, start, said = list(refs.values()), time.monotonic(), False
    while pending:
        _, pending = ray.wait(pending, num_returns=len(pending), timeout=POLL_S)
        free = ray.available_resources()
        lacking = {n: short_of(needs.get(n, {"CPU": 1}), free)
                   for n, ref in refs.items() if ref in pending}
        waiting = [n for n, lack in lacking.items() if lack]
        short = {k: v for lack in lacking.values() for k, v in lack.items()}
        if not short:
            start = time.monotonic()  # placed and starting (a model loading): no deadline
            continue
        waited = time.monotonic() - start
        total = ray.cluster_resources()
        lack = ", ".join(f"{k} (needs 1, {v:g} free of {total.get(k, 0):g})"
                         for k, v in short.items())
        if waited >= timeout_s:
            raise PlacementTimeout(
                f"Ray could not place {len(waiting)} of the run's {len(refs)} actors "
                f"({', '.join(waiting)}) in {timeout_s:g} s: the cluster lacks {lack}. Free "
                "them (other jobs hold them), add nodes, or raise "
                "resources.placement_timeout_s")
        if waited >= WARN_AFTER_S and not said:
            say(f"waiting for room on the Ray cluster for {len(waiting)} actors: it lacks "
                f"{lack}; the run stops after {timeout_s:g} s "
                "(resources.placement_timeout_s)")
            said = True
    return refs


def summary(rows: list[dict[str, Any]]) -> str:
    """One line: how many actors on how many nodes."""
    nodes = {r["node_id"] for r in rows}
    return f"{len(rows)} actors on {len(nodes)} node{'s' * (len(nodes) != 1)}"
