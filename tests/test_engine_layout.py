"""Which simulations a run has, and which shard owns which agents (in process, no Ray)."""

from __future__ import annotations

from pathlib import Path

from mfray.config import RunConfig, SimConfig
from mfray.data.schema import read_dataset
from mfray.engine.layout import plan, shard_sims
from mfray.interventions import Intervention


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
