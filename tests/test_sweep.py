"""mfray sweep: a grid on Ray Tune, one trial per simulation batch, results table, resume."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from mfray.errors import ConfigError
from mfray.sweep import SweepConfig, load_sweep, sweep, trial_name

VARIANTS = ["mf", "state", "persistence"]
SWEEP = {
    "base": {"sim": {"variants": VARIANTS, "seeds": [0], "warmup": 20},
             "policy": {"model": "scripted"}, "resources": {"num_cpus": 2}},
    "world": {"n_events": 2, "min_agents": 48, "max_agents": 48, "warmup": 20},
    "space": {"sim.round_size": [8, 16], "world.herding": [0.0, 3.0], "world.seed": [0, 1]},
    "trial_cpus": 0.5,
    "max_concurrent": 2,
}


def test_eight_trials_table_plot_and_resume(tmp_path: Path) -> None:
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(SWEEP))
    cfg = load_sweep(tmp_path / "sweep.yaml")
    rows = sweep(cfg, tmp_path / "out")
    trials = {r["trial"] for r in rows}
    assert len(trials) == 8 and len(rows) == 8 * len(VARIANTS)
    assert {trial_name(p) for p in cfg.trials()} == trials
    for r in rows:  # every row is a real evaluation of its own run
        assert r["kl"] >= 0 and 0 <= r["tv"] <= 1 and Path(r["run_dir"]).is_dir()
    # the swept world parameter reaches the trial's world: different seeds, different data
    by_trial = {r["trial"]: r for r in rows if r["variant"] == "persistence"}
    assert len({round(r["kl"], 9) for r in by_trial.values()}) > 1
    table = pq.read_table(tmp_path / "out" / "sweep.parquet").to_pylist()
    assert len(table) == len(rows) and {"sim.round_size", "world.herding"} <= set(table[0])
    md = (tmp_path / "out" / "sweep.md").read_text()
    assert md.count("\n| ") == 1 + len(rows)  # header + one line per row
    assert (tmp_path / "out" / "sweep.png").read_bytes()[:4] == b"\x89PNG"
    # rerun: the finished trials are kept, nothing is simulated again
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "out" / "trials").rglob("*.parquet")}
    again = sweep(load_sweep(tmp_path / "sweep.yaml"), tmp_path / "out")
    assert again == rows
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps


@pytest.mark.parametrize(("doc", "match"), [
    ({"space": {}}, "non-empty lists"),
    ({"space": {"round_size": [8]}}, "not section.key"),
    ({"space": {"world.herding": [1.0]}}, "needs a `world` section"),
    ({"space": {"sim.round_size": [0]}}, "sim.round_size must be >= 1"),
    ({"space": {"sim.bogus": [1]}}, "unknown key sim.bogus"),
    ({"world": {"n_events": 0}, "space": {"sim.round_size": [8]}}, "world"),
])
def test_bad_sweeps_fail_before_running(doc: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        cfg = SweepConfig(**doc)
        for params in cfg.trials():
            cfg.build(params)


def test_unknown_sweep_key(tmp_path: Path) -> None:
    (tmp_path / "s.yaml").write_text("space: {sim.round_size: [8]}\nworlds: {}\n")
    with pytest.raises(ConfigError, match="unknown sweep key"):
        load_sweep(tmp_path / "s.yaml")
