"""``mfray validate`` on a small synthetic world with the scripted model."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from mfray.cli import main
from mfray.data.schema import read_dataset
from mfray.store import RunStore
from mfray.validate import TOLERANCE, verdict


def test_validate_runs_every_set_and_resumes(small_world_dir: Path, tmp_path: Path,
                                             capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "v"
    argv = ["validate", "--data", str(small_world_dir), "--out", str(out), "--model",
            "scripted", "--variants", "mf,mf-cal", "--copies", "1", "--copy-seeds", "0,1",
            "--set", "sim.warmup=20"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    tables = json.loads((out / "validate.json").read_text())
    assert set(tables) == {"real", "copies"}
    real, copies = tables["real"]["stance"], tables["copies"]["stance"]
    names = [r["variant"] for r in real["rows"]]
    assert set(names) == {"warmup", "base-rate", "mf", "mf-cal"}
    by = {r["variant"]: r for r in real["rows"]}
    assert by["warmup"]["vs_warmup"][0] == pytest.approx(0.0)  # against itself
    assert by["base-rate"]["vs_base-rate"][0] == pytest.approx(0.0)
    assert by["mf-cal"]["events"] == 4  # every event of the small world, held out in turn
    assert by["mf-cal"]["kl_lo"] <= by["mf-cal"]["kl"] <= by["mf-cal"]["kl_hi"]
    # at most one copy per event (a mix too small for a rollout round is left out), each
    # simulated with two seeds
    made = [e for e in read_dataset(out / "copies-data").event_ids() if "~mix" in e]
    assert 1 <= len(made) <= 4
    assert {r["variant"]: r["events"] for r in copies["rows"]}["mf-cal"] == len(made)
    sims = RunStore.open(out / "copies").read_decisions(columns=["event_id", "seed"])
    assert set(zip(*sims.to_pydict().values(), strict=True)) == {(e, s) for e in made
                                                                 for s in (0, 1)}
    assert real["verdict"].startswith("mf-cal: KL") and copies["verdict"].startswith("mf-cal")
    assert real["floor"][0] > 0
    md = (out / "validate.md").read_text()
    assert md.count("**Verdict**") == 2 and "| mf-cal | 4 |" in md
    assert "real (stance): " in printed and str(out / "validate.md") in printed
    # a second call finds every run complete and only rewrites the tables
    stamp = (out / "real" / "runs.parquet").stat().st_mtime
    assert main(argv) == 0
    assert (out / "real" / "runs.parquet").stat().st_mtime == stamp
    assert json.loads((out / "validate.json").read_text()) == tables


def _row(name: str, kl: float) -> dict:
    return {"variant": name, "kl": kl}


def test_the_verdict_sets_the_recommended_variant_against_the_best_plain_reading() -> None:
    good = verdict([_row("warmup", 0.08), _row("base-rate", 0.5), _row("mf-cal", 0.085)])
    assert good.startswith("mf-cal: KL 0.085 = 1.06 x the best plain reading (warmup, 0.080)")
    assert f"as good (within {TOLERANCE:.0%} or 0.005 nats)" in good
    # a small KL: 1.5 x, yet only 0.003 nats more
    assert "as good" in verdict([_row("base-rate", 0.006), _row("mf-cal", 0.009)])
    assert "better" in verdict([_row("warmup", 0.08), _row("base-rate", 0.02),
                                _row("mf-cal", 0.01)])
    assert "worse" in verdict([_row("warmup", 0.08), _row("mf", 0.2)])  # the first other
    assert verdict([_row("warmup", math.nan), _row("mf", 0.2)]).startswith("no verdict")
