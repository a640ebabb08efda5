"""engine/placement.py: which resources a waiting run lacks, the warning and the deadline of
the wait (Ray's calls replaced by a cluster that never has room), the nodes' round, and the
record in the run (the multi-node runs themselves: tests/test_multinode.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from mfray.engine import placement
from mfray.engine.placement import PlacementTimeout, nth, short_of, summary, wait_placed
from mfray.store import RunStore

ray = pytest.importorskip("ray")


class FakeActor:
    def __init__(self, name: str) -> None:
        self.placement = self
        self.name = name

    def remote(self) -> str:
        return f"ref-{self.name}"


def test_short_of_names_what_the_cluster_lacks() -> None:
    assert short_of({"CPU": 1}, {"CPU": 0.5, "memory": 1e9}) == {"CPU": 0.5}
    assert short_of({"GPU": 1}, {"CPU": 4}) == {"GPU": 0.0}
    assert short_of({"CPU": 1}, {"CPU": 2}) == {}


def test_nodes_go_round_and_none_leaves_the_choice_to_ray() -> None:
    assert [nth(["a", "b", "c"], k) for k in range(5)] == ["a", "b", "c", "a", "b"]
    assert nth([], 3) is None
    rows = [{"node_id": n} for n in "aab"]
    assert summary(rows) == "3 actors on 2 nodes" and summary(rows[:1]) == "1 actors on 1 node"


def _cluster(monkeypatch: pytest.MonkeyPatch, free: dict, ready_after: int | None) -> None:
    """Ray's calls as a cluster with ``free`` resources whose actors answer after
    ``ready_after`` looks (never: None)."""
    looks = []

    def wait(refs: list, num_returns: int, timeout: float) -> tuple[list, list]:
        looks.append(1)
        done = ready_after is not None and len(looks) > ready_after
        return (refs, []) if done else ([], refs)

    monkeypatch.setattr(ray, "wait", wait)
    monkeypatch.setattr(ray, "available_resources", lambda: free)
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 2, "GPU": 1})
    monkeypatch.setattr(placement, "WARN_AFTER_S", 0.0)


def test_a_run_without_room_says_so_then_stops_naming_the_resource(
        monkeypatch: pytest.MonkeyPatch) -> None:
    _cluster(monkeypatch, {"CPU": 0.0, "GPU": 1.0}, ready_after=None)
    said: list[str] = []
    actors = {"meanfield": FakeActor("m"), "model-0": FakeActor("g")}
    with pytest.raises(PlacementTimeout) as caught:
        wait_placed(actors, {"model-0": {"GPU": 1}}, 0.01, said.append)
    assert len(said) == 1 and "lacks CPU (needs 1, 0 free of 2)" in said[0]
    assert "resources.placement_timeout_s" in said[0]
    message = str(caught.value)
    assert "1 of the run's 2 actors (meanfield)" in message and "GPU" not in message


def test_actors_placed_and_starting_are_waited_for_without_a_deadline(
        monkeypatch: pytest.MonkeyPatch) -> None:
    _cluster(monkeypatch, {"CPU": 1.0}, ready_after=3)  # a model loading: room, no answer yet
    said: list[str] = []
    refs = wait_placed({"shard-0": FakeActor("s")}, {}, 1e-9, said.append)
    assert refs == {"shard-0": "ref-s"} and said == []


def test_the_placement_record_grows_by_attempt(tmp_path: Path) -> None:
    store = RunStore.create(tmp_path / "run", run_id="r", config={}, label_space={"stance": ["a"]},
                            model_id="none", n_simulations=1)
    assert store.placement() == []
    store.record_placement(0, [{"actor": "shard-0", "node_id": "n1"}])
    store.record_placement(1, [{"actor": "shard-0", "node_id": "n2"}])
    assert [(r["attempt"], r["node_id"]) for r in store.placement()] == [(0, "n1"), (1, "n2")]


@pytest.mark.parametrize("error", [
    ray.exceptions.ObjectLostError("ab" * 14, None, ""),
    ray.exceptions.NodeDiedError("node 1f2e is dead"),
])
def test_an_object_or_node_lost_with_its_node_is_a_lost_actor(
        error: Exception, monkeypatch: pytest.MonkeyPatch) -> None:
    """The run rebuilds its actors after these (tests/test_multinode.py loses a whole node)."""
    from mfray.engine.driver import ActorLost, _get

    def get(refs: object) -> None:
        raise error

    monkeypatch.setattr(ray, "get", get)
    with pytest.raises(ActorLost, match="a Ray actor of the run died"):
        _get(["ref"])
