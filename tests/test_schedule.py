"""Tests of the MF-LLM schedule: rounds, warm-up, seeded draws and simulation units."""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import pytest
from scipy import stats

from mfray.config import SimConfig
from mfray.data.build import build_dataset
from mfray.data.schema import Dataset
from mfray.errors import ConfigError
from mfray.schedule import (
    agent_uniform,
    build_units,
    is_warmup,
    n_rounds,
    round_slice,
    sample_indices,
    stable_hash,
)

SPACE = {"stance": ("support", "deny", "query", "comment")}


def post(event: str, thread: str, pid: str, parent: str | None, t: float,
         stance: str | None = "comment") -> dict[str, Any]:
    return {"event_id": event, "thread_id": thread, "post_id": pid, "parent_id": parent,
            "time": 1_420_070_400 + t, "text": f"text of {pid}", "labels": {"stance": stance}}


def event(eid: str) -> dict[str, Any]:
    return {"event_id": eid, "topic": f"topic {eid}", "topic_origin": "given", "source": "test"}


@pytest.fixture(scope="module")
def ds() -> Dataset:
    """e1: two threads (A, B) with 4 replies, given out of order; e2: one reply; e3: none."""
    posts = [
        post("e1", "B", "b2", "b0", 30, "deny"),
        post("e1", "A", "a2", "a1", 20, "query"),  # a reply to a reply: context is still a0
        post("e1", "A", "a0", None, 0, "support"),
        post("e1", "B", "b1", "b0", 12),
        post("e1", "A", "a1", "a0", 10, "support"),
        post("e1", "B", "b0", None, 5),
        post("e2", "C", "c0", None, 0),
        post("e2", "C", "c1", "c0", 3, None),
        post("e3", "D", "d0", None, 0),
    ]
    return build_dataset("toy", SPACE, [event("e1"), event("e2"), event("e3")], posts)


# --------------------------------------------------------------------------------------------
# rounds and warm-up


@pytest.mark.parametrize(("n", "b", "rounds"), [(0, 16, 0), (1, 16, 1), (16, 16, 1),
                                                (17, 16, 2), (35, 16, 3), (5, 1, 5)])
def test_n_rounds(n: int, b: int, rounds: int) -> None:
    assert n_rounds(n, b) == rounds


def test_round_slices_partition_the_agents_and_the_last_is_short() -> None:
    n, b = 35, 16
    slices = [round_slice(r, b, n) for r in range(n_rounds(n, b))]
    assert slices[0] == range(16)
    assert slices[-1] == range(32, 35)
    assert list(itertools.chain.from_iterable(slices)) == list(range(n))
    assert len(round_slice(n_rounds(n, b), b, n)) == 0  # past the end: empty


def test_warmup_boundary_is_counted_in_agents() -> None:
    w = 50
    assert is_warmup(0, w) and is_warmup(w - 1, w)
    assert not is_warmup(w, w) and not is_warmup(w + 1, w)
    assert not is_warmup(0, 0)
    # round 3 of 16 (agents 48..63) straddles the boundary
    assert [is_warmup(i, w) for i in round_slice(3, 16, 100)][:3] == [True, True, False]


# --------------------------------------------------------------------------------------------
# seeded draws


def test_stable_hash_is_fixed() -> None:
    # pinned values: a change here changes every seeded draw of every run
    assert stable_hash("synth-00") == 3038443374115685364
    assert stable_hash("e1/A") == 1960839475188412128
    assert 0 <= stable_hash("") < 2**63


def test_agent_uniform_is_pinned_and_depends_only_on_seed_unit_agent() -> None:
    assert agent_uniform(0, "e1", 0) == 0.21671817456961273
    assert agent_uniform(7, "e1/A", 3) == 0.19665640112173333
    assert agent_uniform(7, "e1/A", 3, stream=1) != agent_uniform(7, "e1/A", 3)
    assert agent_uniform(7, "e1/A", 3) == agent_uniform(7, "e1/A", 3)
    draws = {(s, u, a): agent_uniform(s, u, a)
             for s in (0, 1, 2) for u in ("e1", "e2", "e1/A") for a in range(20)}
    assert len(set(draws.values())) == len(draws)  # different across each of the three
    assert all(0.0 <= v < 1.0 for v in draws.values())


def test_agent_uniform_is_uniform() -> None:
    draws = [agent_uniform(3, "e1", a) for a in range(2000)]
    assert stats.kstest(draws, "uniform").pvalue > 1e-3


def sample_index(probs: np.ndarray, u: float) -> int:
    """One draw through :func:`sample_indices`, as the engine draws a row of them."""
    return int(sample_indices(np.asarray(probs)[None, :], np.array([u]))[0])


def test_sample_indices_edges() -> None:
    p = np.array([0.0, 0.2, 0.0, 0.8, 0.0])
    assert sample_index(p, 0.0) == 1  # u=0: the first option with mass, not option 0
    assert sample_index(p, float(np.nextafter(1.0, 0.0))) == 3  # u→1: the last with mass
    assert sample_index(p, 0.1999) == 1 and sample_index(p, 0.2) == 3
    assert sample_index(np.array([1.0]), 0.7) == 0
    # unnormalised weights are normalised
    weights = np.array([2.0, 6.0])
    assert sample_index(weights, 0.24) == 0 and sample_index(weights, 0.26) == 1
    # a matrix of rows draws each row with its own u, as one draw per row would
    rows = np.stack([p, np.array([0.5, 0.0, 0.5, 0.0, 0.0])])
    np.testing.assert_array_equal(sample_indices(rows, np.array([0.3, 0.3])), [3, 0])


def test_sample_indices_never_draws_zero_probability_options() -> None:
    rng = np.random.default_rng(0)
    us = np.linspace(0.0, 1.0, 1000, endpoint=False)
    for _ in range(30):
        p = rng.random(5) * (rng.random(5) < 0.6)
        if p.sum() == 0:
            continue
        drawn = np.array([sample_index(p, float(u)) for u in us])
        assert set(drawn) <= set(np.flatnonzero(p))
        # and inverse-CDF frequencies match the probabilities
        freq = np.bincount(drawn, minlength=5) / len(us)
        np.testing.assert_allclose(freq, p / p.sum(), atol=2 / len(us))


def test_sample_indices_last_zero_option_despite_rounding() -> None:
    p = np.array([0.7214883401940817, 0.5253543224757259, 0.31024187555895566,
                  0.4858353588317891, 0.8894878343490003, 0.9340435159562497,
                  0.35779519670907023, 0.5715298307297609, 0.32186939107594215, 0.0])
    assert sample_index(p, float(np.nextafter(1.0, 0.0))) != 9


# --------------------------------------------------------------------------------------------
# simulation units


def test_event_units_hold_replies_in_arrival_order(ds: Dataset) -> None:
    units = build_units(ds, SimConfig())
    assert [u.key() for u in units] == ["e1", "e2"]  # e3 has no reply: no unit
    e1 = units[0]
    assert e1.thread_id is None and e1.topic == "topic e1" and e1.source == "test"
    assert e1.agents["post_id"].to_pylist() == ["a1", "b1", "a2", "b2"]
    assert e1.n_agents == 4
    assert e1.agents["context_post_id"].to_pylist() == ["a0", "b0", "a0", "b0"]
    assert e1.contexts["a0"] == "text of a0" and e1.contexts["b0"] == "text of b0"
    assert units[1].agents["post_id"].to_pylist() == ["c1"]


def test_thread_units(ds: Dataset) -> None:
    units = build_units(ds, SimConfig(unit="thread"))
    assert [u.key() for u in units] == ["e1/A", "e1/B", "e2/C"]
    assert [u.agents["post_id"].to_pylist() for u in units] == [["a1", "a2"], ["b1", "b2"],
                                                                 ["c1"]]
    assert units[0].thread_id == "A" and units[0].event_id == "e1"


def test_min_replies_filter(ds: Dataset) -> None:
    assert [u.key() for u in build_units(ds, SimConfig(min_replies=2))] == ["e1"]
    assert [u.key() for u in build_units(ds, SimConfig(min_replies=4))] == ["e1"]
    with pytest.raises(ConfigError, match="at least 5 replies"):
        build_units(ds, SimConfig(min_replies=5))


def test_selected_events_keep_the_dataset_order(ds: Dataset) -> None:
    assert [u.key() for u in build_units(ds, SimConfig(events=("e2", "e1")))] == ["e1", "e2"]
    assert [u.key() for u in build_units(ds, SimConfig(events=("e2",)))] == ["e2"]


def test_unknown_event_is_a_config_error(ds: Dataset) -> None:
    with pytest.raises(ConfigError, match=r"unknown event\(s\) \['zz'\]"):
        build_units(ds, SimConfig(events=("e1", "zz")))


def test_nothing_selected_is_a_config_error(ds: Dataset) -> None:
    with pytest.raises(ConfigError, match=r"sim.events names e3, which has 0 replies"):
        build_units(ds, SimConfig(events=("e3",)))
    with pytest.raises(ConfigError, match="no simulation unit"):
        build_units(ds, SimConfig(min_replies=10_000))


def test_units_are_the_same_from_slices_and_from_filters(ds: Dataset) -> None:
    """Events whose posts lie together are sliced, not copied (a world of 10^7 agents would
    be held twice); interleaved events and a thread source among the replies are filtered,
    with the same units."""
    import pyarrow as pa

    from mfray.data.build import build_dataset

    cfg = SimConfig(min_replies=1)
    sliced = build_units(ds, cfg)
    assert ds._event_rows == {"e1": (0, 6), "e2": (6, 8), "e3": (8, 9)}
    order = [0, 6, 1, 7, 2, 8, 3, 4, 5]  # e1 and e2 interleaved, each in time order
    mixed = Dataset(ds.name, ds.label_space, ds.events, ds.posts.take(pa.array(order)))
    assert mixed._event_rows is None
    for a, b in zip(sliced, build_units(mixed, cfg), strict=True):
        assert a.agents.equals(b.agents) and a.contexts == b.contexts
    assert sliced[0].contexts == {"a0": "text of a0", "b0": "text of b0"}  # sources only
    late = build_dataset("toy", SPACE, [event("e4")], [  # a source between the replies
        post("e4", "A", "a0", None, 0), post("e4", "A", "a1", "a0", 1),
        post("e4", "B", "b0", None, 2), post("e4", "B", "b1", "b0", 3)])
    (unit,) = build_units(late, cfg)
    assert unit.agents["post_id"].to_pylist() == ["a1", "b1"]
