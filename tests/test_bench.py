from __future__ import annotations

from pathlib import Path

from mfray.bench import bench_scripted


def test_scripted_bench_reports_consistent_figures(tmp_path: Path) -> None:
    r = bench_scripted(simulations=12, agents=60, warmup=20, workdir=tmp_path)
    assert r["decisions"] == 12 * 60
    assert r["model_decisions"] == 12 * (60 - 20)
    assert r["decisions_per_s"] >= r["decisions_per_s_incl_startup"] > 0
    assert 0 < r["peak_memory_gib"] < 16
