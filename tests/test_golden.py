"""Golden runs: the decisions and rounds tables of fixed runs, frozen before the redesign of
issue 38, must stay the same row for row.

Two runs: every variant with the scripted model (choice mode, an intervention, two seeds, two
shards) and a tiny random-weight transformers model (choice mode with the text mean field, and
text mode). Run ids, latencies and timings are dropped; floats are compared at 10 significant
digits, so that a last-bit difference of a platform's exp/log or matmul kernels (AVX2 against
AVX-512) does not count, while any change of a prompt, a draw or an update does.

``MFRAY_GOLDEN_REGEN=1 pytest tests/test_golden.py`` rewrites the frozen files: only ever on
purpose, for a change of behaviour that is meant, said in the commit.
"""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path
from typing import Any

import pytest

from mfray.config import PolicyConfig, ResourcesConfig, RunConfig, SimConfig
from mfray.data.schema import read_dataset, write_dataset
from mfray.data.synthetic import WorldParams, generate
from mfray.engine import simulate
from mfray.interventions import Intervention

GOLDEN = Path(__file__).resolve().parent / "fixtures" / "golden"
VOLATILE = ("run_id", "latency_s", "t_policy_s", "t_meanfield_s", "t_total_s")
REGEN = os.environ.get("MFRAY_GOLDEN_REGEN") == "1"
EVERY_VARIANT = ("state", "recent", "popular", "mf", "mf-text", "mf-hybrid", "base-rate",
                 "persistence", "crowd", "oracle", "bayes", "surrogate-mf", "surrogate-state")


def _canon(value: Any) -> Any:
    if isinstance(value, float):
        return float(f"{value:.10g}")
    if isinstance(value, dict):
        return {k: _canon(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_canon(v) for v in value]
    return value


def _rows(table) -> list[str]:
    """The table's rows as canonical JSON lines, volatile columns dropped, in stored order."""
    table = table.drop_columns([c for c in VOLATILE if c in table.column_names])
    return [json.dumps(_canon(r), sort_keys=True) for r in table.to_pylist()]


def _check(name: str, store) -> None:
    got = {"decisions": _rows(store.read_decisions()), "rounds": _rows(store.read_rounds())}
    path = GOLDEN / f"{name}.json.gz"
    if REGEN:
        GOLDEN.mkdir(parents=True, exist_ok=True)
        with gzip.open(path, "wt", encoding="utf-8") as f:
            json.dump(got, f)
        pytest.skip(f"rewrote {path}")
    with gzip.open(path, "rt", encoding="utf-8") as f:
        want = json.load(f)
    for table in ("decisions", "rounds"):
        assert len(got[table]) == len(want[table]), f"{name} {table}: row count changed"
        for i, (g, w) in enumerate(zip(got[table], want[table], strict=True)):
            assert g == w, f"{name} {table} row {i} changed:\n got  {g}\n want {w}"


@pytest.fixture(scope="module")
def golden_world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    _, ds = generate(WorldParams(n_events=3, min_agents=40, max_agents=56, warmup=16, seed=11))
    return write_dataset(ds, tmp_path_factory.mktemp("golden") / "data")


def test_scripted_run_is_unchanged(golden_world: Path, tmp_path: Path) -> None:
    iv = Intervention("counter", round=1, label="deny", count=4, text="This is false.")
    cfg = RunConfig(
        sim=SimConfig(data=str(golden_world), variants=EVERY_VARIANT, seeds=(0, 1),
                      round_size=8, warmup=16, interventions=(iv,)),
        policy=PolicyConfig(model="scripted"),
        resources=ResourcesConfig(num_shards=2, num_cpus=2))
    store = simulate(cfg, read_dataset(golden_world), tmp_path / "run", progress=False)
    assert store.run_info()["status"] == "complete"
    _check("scripted", store)


@pytest.mark.parametrize("mode", ["choice", "text"])
def test_tiny_hf_run_is_unchanged(golden_world: Path, tiny_hf, tmp_path: Path, mode: str
                                  ) -> None:
    variants = ("state", "mf", "mf-text") if mode == "choice" else ("state", "mf")
    cfg = RunConfig(
        sim=SimConfig(data=str(golden_world), variants=variants, seeds=(0,), round_size=8,
                      warmup=16, events=(read_dataset(golden_world).event_ids()[0],)),
        policy=PolicyConfig(model="tiny", mode=mode, max_new_tokens=8),
        resources=ResourcesConfig(num_shards=1, num_cpus=2))
    store = simulate(cfg, read_dataset(golden_world), tmp_path / "run", progress=False,
                     model=tiny_hf)
    assert store.run_info()["status"] == "complete"
    _check(f"tiny-hf-{mode}", store)
