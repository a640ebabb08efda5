"""Load: 1,000 concurrent simulations × 20 rounds with the scripted model (issue: reliability).
Every agent decides exactly once and the memory of all Ray processes stays bounded."""

from __future__ import annotations

from pathlib import Path

import pytest

from mfray.bench import bench_scripted


@pytest.mark.slow
def test_thousand_simulations_twenty_rounds(tmp_path: Path) -> None:
    r = bench_scripted(simulations=1000, agents=160, warmup=40, round_size=8, workdir=tmp_path)
    assert r["decisions"] == r["distinct_agents"] == 1000 * 160  # none lost, none twice
    assert r["model_decisions"] == 1000 * (160 - 40)
    assert r["rounds"] == 20
    print(f"peak memory {r['peak_memory_gib']} GiB, {r['decisions_per_s']} decisions/s")
    assert 0 < r["peak_memory_gib"] < 8
