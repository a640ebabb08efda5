from __future__ import annotations

import json
from pathlib import Path

import pytest

from mfray.data.synthetic import WorldParams
from mfray.demo import DEMO_VARIANTS, run_demo


def test_demo_runs_data_store_evaluate(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    kl = run_demo(tmp_path / "demo", WorldParams(n_events=5, min_agents=80, max_agents=120),
                  seeds=(0,), model="scripted-world", progress=False)
    out = capsys.readouterr().out
    assert set(kl) == set(DEMO_VARIANTS)
    assert "known effect" in out and "| oracle |" in out
    # the world's truth beats the memorised base rate of the other events
    assert kl["oracle"] < kl["base-rate"]
    saved = json.loads((tmp_path / "demo" / "demo.json").read_text())
    assert saved["kl"] == kl
    assert (tmp_path / "demo" / "run" / "eval" / "shares.png").exists()
    assert (tmp_path / "demo" / "data" / "posts.parquet").exists()
