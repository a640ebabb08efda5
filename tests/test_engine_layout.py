"""Which simulations a run has, and which shard owns which agents (in process, no Ray)."""

from __future__ import annotations

import itertools
from dataclasses import replace
from pathlib import Path

import pytest

from mfray.config import RunConfig, SimConfig
from mfray.data.schema import read_dataset
from mfray.engine.layout import (
    BASE_BYTES,
    BYTES_PER_AGENT,
    BYTES_PER_DISTINCT_AGENT,
    check_memory,
    memory_estimate,
    plan,
    shard_sims,
    waves,
)
from mfray.errors import ConfigError
from mfray.interventions import Intervention
from mfray.schedule import n_rounds


def _cfg(data: Path) -> RunConfig:
    return RunConfig(sim=SimConfig(data=str(data), variants=("mf", "base-rate"), seeds=(0, 1),
                                   interventions=(Intervention("boost", round=3, label="deny",
                                                               count=2),)))


def test_plan_is_units_seeds_variants_twins(small_world_dir: Path) -> None:
    ds = read_dataset(small_world_dir)
    specs = plan(_cfg(small_world_dir), ds)
    assert [s.sim_id for s in specs] == list(range(len(specs)))
    first = [(s.seed, s.variant, s.label) for s in specs[:8]]
    assert first == [(0, "mf", "mf"), (0, "mf", "mf+boost"), (0, "base-rate", "base-rate"),
                     (0, "base-rate", "base-rate+boost"), (1, "mf", "mf"),
                     (1, "mf", "mf+boost"), (1, "base-rate", "base-rate"),
                     (1, "base-rate", "base-rate+boost")]
    assert len({s.unit.key() for s in specs}) * 8 == len(specs)


def test_agent_i_lives_on_shard_i_mod_s(small_world_dir: Path) -> None:
    ds = read_dataset(small_world_dir)
    cfg = _cfg(small_world_dir)
    specs = plan(cfg, ds)
    one, metas, world, references = shard_sims(specs, ds, cfg, 1)
    three, metas3, _, references3 = shard_sims(specs, ds, cfg, 3)
    assert world is None and metas == metas3 and references == references3
    assert [m.label for m in metas] == [s.label for s in specs]
    whole = {s.sim_id: s for s in one[0]}
    for k, shard in enumerate(three):
        assert [s.sim_id for s in shard] == [s.sim_id for s in specs]
        for part in shard:
            full = whole[part.sim_id]
            assert part.agent_index == tuple(range(k, len(full.agent_index), 3))
            assert part.persona == tuple(full.persona[i] for i in part.agent_index)
            assert part.real == tuple(full.real[i] for i in part.agent_index)
            assert part.label == full.label


def test_a_run_too_large_for_the_memory_runs_in_waves_or_is_refused_before_it_starts(
        small_world_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """20,000 seeds ran into many GB without a word (issue 41): the estimate, linear in the
    agents held at once, is checked against the free memory before Ray starts; since issue 42
    a run holds at most resources.wave_agents of them at once (its waves), and only a wave
    too large is refused."""
    from mfray.engine import driver

    ds = read_dataset(small_world_dir)
    cfg = replace(_cfg(small_world_dir), sim=replace(_cfg(small_world_dir).sim,
                                                     seeds=tuple(range(20_000))))
    specs = plan(cfg, ds)
    agents = sum(s.unit.n_agents for s in specs)
    distinct = sum({s.unit.key(): s.unit.n_agents for s in specs}.values())
    assert distinct * 20_000 * 4 == agents  # 20,000 seeds × 2 variants × 2 (twin, boost)
    assert memory_estimate(specs) == (BASE_BYTES + BYTES_PER_AGENT * agents
                                      + BYTES_PER_DISTINCT_AGENT * distinct)
    assert memory_estimate(specs[:8]) < 2 * BASE_BYTES  # a usual run is far below
    # in waves of at most a million agents, each wave fits in 8 GiB
    split = waves(specs, 1_000_000, cfg.sim.round_size)
    assert [s for w in split for s in w.specs] == specs
    assert all(sum(s.unit.n_agents for s in w.specs) <= 1_000_000 for w in split)
    assert len(split) >= agents / 1_000_000
    for before, after in itertools.pairwise(split):  # steps numbered on
        assert after.first_step == before.steps.stop
        assert before.rounds == max(n_rounds(s.unit.n_agents, 16) for s in before.specs)
    check_memory(split, 8 << 30)
    # as one wave it would not
    whole = waves(specs, agents, cfg.sim.round_size)
    assert len(whole) == 1
    check_memory(whole, memory_estimate(specs))  # exactly enough passes
    with pytest.raises(ConfigError, match=r"320,000 simulations of .* held at once need about "
                                          r".* GiB of memory; 8\.0 GiB is free here\. Lower "
                                          r"resources\.wave_agents"):
        check_memory(whole, 8 << 30)
    # simulate() refuses it at once: no Ray, no shards built, no run directory
    monkeypatch.setattr(driver, "_free_memory", lambda: 8 << 30)
    monkeypatch.setattr(driver, "ensure_ray", lambda *a: pytest.fail("Ray was started"))
    cfg = replace(cfg, resources=replace(cfg.resources, wave_agents=agents))
    with pytest.raises(ConfigError, match="Lower resources.wave_agents"):
        driver.simulate(cfg, ds, small_world_dir.parent / "never", progress=False)
    assert not (small_world_dir.parent / "never" / "runs.parquet").exists()
