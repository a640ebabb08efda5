"""mfray plan: candidates against their twins, ranked by their effect on a target share."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from mfray.cli import main
from mfray.config import PolicyConfig, ResourcesConfig, RunConfig, SimConfig
from mfray.errors import ConfigError
from mfray.interventions import Intervention
from mfray.plan import make_candidates, plan


def _cfg(data: Path) -> RunConfig:
    # scripted-world follows the world's own rule: agents herd on the shares they see
    return RunConfig(sim=SimConfig(data=str(data), variants=("mf",), seeds=(0, 1), warmup=32),
                     policy=PolicyConfig(model="scripted-world"),
                     resources=ResourcesConfig(num_cpus=2))


def test_candidates_grid_and_names() -> None:
    got = make_candidates([1, 2], [8], ["deny", "query"], ["Fake.", "Source?"])
    assert len(got) == 8 and len({c.name for c in got}) == 8
    assert got[0] == Intervention(name="r1-n8-deny-t0", round=1, kind="inject", label="deny",
                                  count=8, text="Fake.")
    with pytest.raises(ConfigError, match="at least one"):
        make_candidates([], [8], ["deny"])


def test_plan_ranks_candidates_by_their_effect(herding_world: Path, tmp_path: Path) -> None:
    options = make_candidates([2, 4], [4, 48], ["deny", "support"])
    rows = plan(_cfg(herding_world), tmp_path / "raise", ("stance", "deny"), lower=False,
                candidates=options, progress=False)
    assert len(rows) == len(options) == 8
    effects = [r["effect"] for r in rows]
    assert effects == sorted(effects, reverse=True) and [r["rank"] for r in rows] == list(
        range(1, 9))
    assert all(r["pairs"] == 4 for r in rows)  # 2 events x 2 seeds, each against its twin
    best = rows[0]
    # in a herding world, the most deny posts, early, raise the deny share most; and more
    # deny always beats fewer
    assert (best["label"], best["count"], best["round"]) == ("deny", 48, 2)
    assert best["low"] > 0
    eff = {r["intervention"]: r["effect"] for r in rows}
    assert eff["r2-n48-deny"] > eff["r2-n4-deny"] and eff["r2-n48-support"] < 0
    md = (tmp_path / "raise" / "plan.md").read_text()
    assert "raise the share of stance=deny" in md and md.count("\n| ") == 1 + 5
    table = (tmp_path / "raise" / "plan.csv").read_text().splitlines()
    assert len(list(csv.DictReader(table))) == 8
    assert (tmp_path / "raise" / "plan.png").read_bytes()[:4] == b"\x89PNG"
    # lowering the share reverses the order; the finished run is reused, not simulated again
    stamp = (tmp_path / "raise" / "run" / "runs.parquet").stat().st_mtime_ns
    lowered = plan(_cfg(herding_world), tmp_path / "raise", ("stance", "deny"), lower=True,
                   candidates=options, progress=False)
    assert [r["intervention"] for r in lowered] == [r["intervention"] for r in rows][::-1]
    assert (tmp_path / "raise" / "run" / "runs.parquet").stat().st_mtime_ns == stamp


def test_plan_command_line(herding_world: Path, tmp_path: Path,
                           capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["plan", "--data", str(herding_world), "--out", str(tmp_path / "p"),
                 "--variants", "mf", "--model", "scripted-world", "--target", "stance=query",
                 "--rounds", "2", "--counts", "16", "--labels", "query,comment",
                 "--sim.seeds=[0]", "--sim.warmup=32", "--top", "2"])
    out = capsys.readouterr().out
    assert code == 0 and "raise the share of stance=query" in out and "r2-n16-query" in out
    assert main(["plan", "--data", str(herding_world), "--out", str(tmp_path / "q"),
                 "--target", "stance", "--rounds", "2", "--counts", "1",
                 "--labels", "deny"]) == 2
    assert "DIMENSION=LABEL" in capsys.readouterr().err
