"""A run in waves (``resources.wave_agents``, issue 42): simulations held in memory a wave at a
time, one wave after another, give the rows of a run that holds them all at once; a stop in a
later wave resumes there, on another number of shards and whatever wave size is asked then."""

from __future__ import annotations

from pathlib import Path

from mfray.config import PolicyConfig, ResourcesConfig, RunConfig, SimConfig
from mfray.data.schema import read_dataset
from mfray.engine import plan, simulate
from mfray.engine.layout import waves
from mfray.store import RunStore

VOLATILE = ("run_id", "latency_s", "t_policy_s", "t_meanfield_s", "t_total_s")


def _cfg(data: Path, wave_agents: int, shards: int = 1) -> RunConfig:
    return RunConfig(sim=SimConfig(data=str(data), variants=("mf", "crowd"), seeds=(0,),
                                   round_size=16, warmup=32),
                     policy=PolicyConfig(model="scripted"),
                     resources=ResourcesConfig(num_shards=shards, wave_agents=wave_agents))


def _rows(store: RunStore, table: str) -> list[dict]:
    t = store.read_decisions() if table == "decisions" else store.read_rounds()
    rows = t.drop_columns([c for c in VOLATILE if c in t.column_names]).to_pylist()
    return sorted(rows, key=lambda r: (r["sim_id"], r.get("agent_index", r["round"])))


def test_a_run_in_waves_gives_the_rows_of_one_wave_and_resumes_in_a_later_wave(
        small_world_dir: Path, tmp_path: Path) -> None:
    ds = read_dataset(small_world_dir)
    whole = simulate(_cfg(small_world_dir, 10**6), ds, tmp_path / "whole", progress=False)
    specs = plan(_cfg(small_world_dir, 10**6), ds)
    size = sum(s.unit.n_agents for s in specs) // 3
    split = waves(specs, size, 16)
    assert len(split) >= 3 and len(waves(specs, 10**6, 16)) == 1
    # stopped in the middle of the second wave, resumed on two shards, asking other waves
    stop = split[1].first_step + split[1].rounds // 2
    part = simulate(_cfg(small_world_dir, size), ds, tmp_path / "waves", progress=False,
                    max_rounds=stop)
    assert part.completed_rounds() == list(range(stop))
    done = simulate(_cfg(small_world_dir, size // 2, shards=2), ds, tmp_path / "waves",
                    progress=False, resume=True)
    assert done.run_info()["status"] == "complete"
    assert done.completed_rounds() == list(range(split[-1].steps.stop))  # its own waves
    assert whole.completed_rounds() == list(range(max(w.rounds for w in split)))
    assert _rows(done, "decisions") == _rows(whole, "decisions")
    assert _rows(done, "rounds") == _rows(whole, "rounds")
    refs = [sorted(map(str, s.read_references().to_pylist())) for s in (done, whole)]
    assert refs[0] == refs[1] and refs[0]  # crowd's fits, every wave's, once each
    assert {r.get("wave") for r in done.placement()} == set(range(len(split)))
