"""Resampled training events: real replies of one event in drawn label mixes, whose mean field
then tells the mix (the topic no longer can)."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pytest

from mfray.config import PolicyConfig, RunConfig, SimConfig
from mfray.data.mix import copy_sizes, mix_events, reply_mix, source_event
from mfray.data.schema import STANCE_OPTIONS, read_dataset
from mfray.errors import ConfigError
from mfray.train.config import TrainParams
from mfray.train.data import build_examples


def _replies(ds, event: str):
    posts = ds.posts_of(event)
    return posts.filter(pc.is_valid(posts["parent_id"]))


def test_copy_sizes_take_the_largest_population_the_counts_allow() -> None:
    assert copy_sizes(np.array([10, 50]), np.array([0.5, 0.5])).tolist() == [10, 10]
    assert copy_sizes(np.array([4, 100, 7]), np.array([0.2, 0.8, 0.0])).tolist() == [4, 16, 0]
    assert copy_sizes(np.array([3, 3]), np.array([0.0, 1.0])).tolist() == [0, 3]


def test_copies_are_ordered_subsets_of_the_real_replies_in_varied_mixes(
        small_world_dir: Path) -> None:
    ds = read_dataset(small_world_dir)
    events = ds.event_ids()[:2]
    mixed, ids = mix_events(ds, events, 4, seed=1, min_agents=20)
    expected = [f"{e}~mix{k}" for e in events for k in range(4)]
    assert len(ids) >= 6 and ids == [i for i in expected if i in ids]  # few too small to fill
    assert mixed.posts.schema == ds.posts.schema and mixed.events.schema == ds.events.schema
    assert ds.posts.num_rows < mixed.posts.num_rows  # the originals are kept, untouched
    comment_shares = []
    for copy_id in ids:
        event = copy_id.split("~mix")[0]
        real = _replies(ds, event)["post_id"].to_pylist()
        kept = _replies(mixed, copy_id)["post_id"].to_pylist()
        assert len(kept) >= 20 and len(set(kept)) == len(kept)
        assert kept == [p for p in real if p in set(kept)]  # arrival order kept
        sources = ds.posts_of(event).filter(pc.is_null(ds.posts_of(event)["parent_id"]))
        assert set(sources["post_id"].to_pylist()) <= set(
            mixed.posts_of(copy_id)["post_id"].to_pylist())  # every context is still there
        labels = Counter(x["stance"] for x in _replies(mixed, copy_id)["labels"].to_pylist())
        comment_shares.append(labels["comment"] / len(kept))
    assert max(comment_shares) - min(comment_shares) > 0.3  # the mixes really differ
    again, _ = mix_events(ds, events, 4, seed=1, min_agents=20)
    assert again.posts.equals(mixed.posts)
    other, _ = mix_events(ds, events, 4, seed=2, min_agents=20)
    assert not other.posts.equals(mixed.posts)


def test_copies_centred_on_the_base_rate_scatter_around_it(small_world_dir: Path) -> None:
    """``centre="base-rate"``: mixes drawn around the copied events' pooled reply mix, where
    the default draws them around the uniform mix; the default's draws are unchanged."""
    ds = read_dataset(small_world_dir)
    events = ds.event_ids()
    pooled = sum(reply_mix(ds, e, "stance") for e in events)
    pooled = pooled / pooled.sum()
    assert pooled[STANCE_OPTIONS.index("query")] < 0.1  # far from uniform

    def mean_mix(mixed, ids) -> np.ndarray:
        shares = [reply_mix(mixed, i, "stance") / reply_mix(mixed, i, "stance").sum()
                  for i in ids]
        return np.mean(shares, axis=0)

    centred = mix_events(ds, events, 12, alpha=20.0, seed=0, min_agents=10, centre="base-rate")
    uniform = mix_events(ds, events, 12, alpha=20.0, seed=0, min_agents=10)
    assert len(centred[1]) >= 20 and len(uniform[1]) >= 20  # the counts fill some copies
    near, far = (np.abs(mean_mix(*m) - pooled).max() for m in (centred, uniform))
    assert near < 0.03 and far > 0.1
    np.testing.assert_allclose(mean_mix(*uniform), 0.25, atol=0.05)
    same = mix_events(ds, events, 12, alpha=20.0, seed=0, min_agents=10, centre="uniform")
    assert same[0].posts.equals(uniform[0].posts)
    with pytest.raises(ConfigError, match="centre"):
        mix_events(ds, events, 1, centre="median")


def test_a_copy_the_counts_cannot_fill_is_left_out(small_world_dir: Path) -> None:
    ds = read_dataset(small_world_dir)
    assert mix_events(ds, ds.event_ids()[:1], 3, min_agents=10_000) == (ds, [])
    with pytest.raises(ConfigError):
        mix_events(ds, ds.event_ids(), 1, alpha=0)
    with pytest.raises(ConfigError):
        mix_events(ds, ds.event_ids(), 1, dimension="mood")
    with pytest.raises(ConfigError):
        TrainParams(mix_copies=-1)


def test_the_mean_field_of_a_copy_reports_the_copy_s_own_mix(small_world_dir: Path) -> None:
    ds = read_dataset(small_world_dir)
    mixed, ids = mix_events(ds, ds.event_ids()[:1], 3, seed=0, min_agents=20)
    cfg = RunConfig(sim=SimConfig(data=str(small_world_dir), round_size=8),
                    policy=PolicyConfig(model="scripted"))
    policy, _ = build_examples(cfg, mixed, "mf", events=ids)
    assert set(policy["event_id"].to_pylist()) == set(ids)
    for copy_id in ids:
        rows = policy.filter(pc.equal(policy["event_id"], copy_id)).to_pylist()
        last = rows[-1]
        seen = [r["label"] for r in rows if r["round"] < last["round"]]  # earlier rounds
        shown = dict(re.findall(r"(support|deny|query|comment) (\d+)%", last["prompt"]))
        for option in ("support", "deny", "query", "comment"):
            assert int(shown[option]) == round(100 * seen.count(option) / len(seen))


def test_training_with_mix_copies_reads_only_copies_of_training_events(
        small_world_dir: Path, tmp_path: Path) -> None:
    from mfray.train.config import TrainConfig
    from mfray.train.data import read_examples
    from mfray.train.prepare import prepare_examples

    ds = read_dataset(small_world_dir)
    held = ds.event_ids()[0]
    cfg = TrainConfig(sim=SimConfig(data=str(small_world_dir), round_size=4),
                      policy=PolicyConfig(model="scripted"),
                      train=TrainParams(variant="mf", held_out=(held,), mix_copies=3))
    table = read_examples(prepare_examples(cfg, ds, tmp_path, "policy"))
    events = set(table["event_id"].to_pylist())
    assert events and all("~mix" in e and not e.startswith(held) for e in events)


def test_copies_are_evaluation_events_for_every_leave_one_out_rule(
        small_world_dir: Path) -> None:
    from mfray.baselines import reference_fits
    from mfray.train.config import TrainConfig
    from mfray.train.prepare import training_events

    assert source_event("e1~mix3") == "e1" and source_event("e1") == "e1"
    assert source_event("e1~mix0~mix2") == "e1"
    ds = read_dataset(small_world_dir)
    held, other = ds.event_ids()[:2]
    mixed, ids = mix_events(ds, [held, other], 3, seed=0, min_agents=20)
    held_ids = [e for e in ids if e.startswith(held)]
    other_ids = [e for e in ids if e.startswith(other)]
    assert held_ids and other_ids

    def train_cfg(name: str, events: tuple[str, ...] = ()) -> TrainConfig:
        return TrainConfig(sim=SimConfig(data=str(small_world_dir), round_size=4, events=events),
                           policy=PolicyConfig(model="scripted"),
                           train=TrainParams(held_out=(name,)))

    real_others = [e for e in ds.event_ids() if e != held]
    for name in (held, held_ids[0]):  # holding out the event or one copy holds out all of them
        assert training_events(train_cfg(name), mixed) == real_others  # copies: not by default
    named = (*real_others, other_ids[0], held_ids[1])  # named copies count, held out stays out
    assert training_events(train_cfg(held, named), mixed) == [*real_others, other_ids[0]]
    # base-rate fits on the other real events: no copy, of the unit's event or of another
    space = {"stance": list(STANCE_OPTIONS)}
    labels = {e: _replies(mixed, e)["labels"].to_pylist() for e in mixed.event_ids()}
    sim = SimConfig(data=str(small_world_dir))
    got = {d: f.probs for d, f in reference_fits("base-rate", held_ids[1], labels[held_ids[1]],
                                                 labels, space, sim).items()}
    counts = Counter(x["stance"] for e in real_others for x in labels[e])
    np.testing.assert_allclose(got["stance"], [counts[o] / sum(counts.values())
                                               for o in STANCE_OPTIONS], atol=1e-5)
    with pytest.raises(ConfigError, match="overlap"):
        SimConfig(events=(held_ids[0],), train_events=(held,))


def test_unknown_events_are_refused_and_new_copies_get_new_names(small_world_dir: Path) -> None:
    ds = read_dataset(small_world_dir)
    with pytest.raises(ConfigError, match="unknown event"):
        mix_events(ds, ["nope"], 2)
    event = ds.event_ids()[0]
    mixed, ids = mix_events(ds, [event], 2, seed=0, min_agents=5)
    assert ids == [f"{event}~mix0", f"{event}~mix1"]
    again, more = mix_events(mixed, [event], 2, seed=1, min_agents=5)
    assert more == [f"{event}~mix2", f"{event}~mix3"]
    assert again.posts_of(ids[0]).equals(mixed.posts_of(ids[0]))  # the first copies untouched
    counts = reply_mix(mixed, ids[0], "stance")
    kept = Counter(x["stance"] for x in _replies(mixed, ids[0])["labels"].to_pylist())
    assert counts.tolist() == [kept[o] for o in STANCE_OPTIONS]


def test_topped_up_copies_keep_every_drawn_mix_and_reach_min_agents(
        small_world_dir: Path) -> None:
    """``top_up``: no redraws; an option that runs short keeps all its replies and draws the
    missing ones again, under new ids; the shares follow the drawn mix."""
    assert copy_sizes(np.array([4, 100]), np.array([0.5, 0.5]), least=40).tolist() == [20, 20]
    assert copy_sizes(np.array([40, 100]), np.array([0.5, 0.5]), least=40).tolist() == [40, 40]
    ds = read_dataset(small_world_dir)
    events = ds.event_ids()[:2]
    least = max(len(_replies(ds, e)) for e in events) + 30  # more than any event has
    mixed, ids = mix_events(ds, events, 5, seed=3, min_agents=least, top_up=True)
    assert ids == [f"{e}~mix{k}" for e in events for k in range(5)]  # none left out
    gaps = []
    for copy_id in ids:
        event = copy_id.split("~mix")[0]
        ids_kept = _replies(mixed, copy_id)["post_id"].to_pylist()
        assert len(ids_kept) >= least and len(set(ids_kept)) == len(ids_kept)
        originals = {i.split("~")[0] for i in ids_kept}
        assert originals <= set(_replies(ds, event)["post_id"].to_pylist())
        assert any("~" in i for i in ids_kept)  # some replies were drawn again
        real, got = reply_mix(ds, event, "stance"), reply_mix(mixed, copy_id, "stance")
        gaps.append(np.abs(got / got.sum() - real / real.sum()).max())
        times = mixed.posts_of(copy_id)["time"].to_pylist()
        assert times == sorted(times)  # still in time order
        where = {i: k for k, i in enumerate(ids_kept)}
        apart = [abs(where[i] - where[i.split("~")[0]]) for i in ids_kept if "~" in i]
        assert np.median(apart) > 3  # repeats spread over the copy, not next to their original
    assert max(gaps) > 0.3  # mixes far from the event's own are kept, not redrawn
    assert mix_events(ds, events, 5, seed=3, min_agents=least, top_up=True)[0].posts.equals(
        mixed.posts)
