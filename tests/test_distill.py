"""mfray/distill.py and `mfray distill`: a policy distilled from a run's logged prompts, its
simulations against the teacher's, and the engine's guarantees for it (shard invariance,
resume). The teacher is the synthetic world's own rule (``scripted-world``), which reads the
persona and the mean field as an LLM policy's prompt shows them."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pyarrow.compute as pc
import pytest

from mfray.cli import main
from mfray.config import PolicyConfig, ResourcesConfig, RunConfig, SimConfig
from mfray.data.schema import read_dataset
from mfray.distill import distill, side_by_side
from mfray.engine import simulate
from mfray.errors import ConfigError, MfrayError
from mfray.store import RunStore

VOLATILE = ("run_id", "latency_s")


def _cfg(data: Path, model: str, shards: int = 1, log: bool = False) -> RunConfig:
    return RunConfig(sim=SimConfig(data=str(data), variants=("mf",), seeds=(0, 1),
                                   round_size=8, warmup=16),
                     policy=PolicyConfig(model=model, log_prompts=log),
                     resources=ResourcesConfig(num_shards=shards))


def _stable(store: RunStore) -> list[dict]:
    table = store.read_decisions()
    return table.drop_columns([c for c in VOLATILE if c in table.column_names]).to_pylist()


def test_a_distilled_policy_simulates_like_its_teacher(small_world_dir: Path,
                                                       tmp_path: Path) -> None:
    ds = read_dataset(small_world_dir)
    teacher = simulate(_cfg(small_world_dir, "scripted-world", log=True), ds,
                       tmp_path / "teacher", progress=False)
    path, report = distill(teacher.run_dir, tmp_path / "student")
    assert path == tmp_path / "student" / "distilled.json"
    (fit,) = report
    assert fit["options"] == ["support", "deny", "query", "comment"]
    assert fit["heldout_kl"] < 0.01 < fit["heldout_kl_of_the_mean"]
    # the student, on one shard, and on three with a stop and a resume: the same rows
    student = _cfg(small_world_dir, str(tmp_path / "student"))
    one = simulate(student, ds, tmp_path / "one", progress=False)
    three = replace(student, resources=ResourcesConfig(num_shards=3))
    simulate(three, ds, tmp_path / "three", progress=False, max_rounds=3)
    resumed = simulate(three, ds, tmp_path / "three", progress=False, resume=True)
    assert one.run_info()["model_id"] == "distilled:student"
    assert _stable(resumed) == _stable(one)
    rows = side_by_side(teacher.run_dir, one.run_dir)
    assert len(rows) == ds.events.num_rows  # every event, the one variant, stance
    assert max(r["kl"] for r in rows) < 0.01, rows
    # as its own variant, mf-distilled, in the teacher's run: the student's own decisions
    both = replace(_cfg(small_world_dir, "scripted-world"),
                   policy=PolicyConfig(model="scripted-world", distilled=str(tmp_path / "student")))
    both = replace(both, sim=replace(both.sim, variants=("mf", "mf-distilled")))
    run = simulate(both, ds, tmp_path / "both", progress=False)
    keep = ["event_id", "seed", "agent_index", "action", "probs", "nll", "template_hash"]
    table = run.read_decisions()
    assert set(table["variant"].to_pylist()) == {"mf", "mf-distilled"}
    own = table.filter(pc.equal(table["variant"], "mf-distilled")).select(keep)
    assert own.sort_by([(k, "ascending") for k in keep[:3]]).to_pylist() == \
        one.read_decisions(columns=keep).sort_by([(k, "ascending") for k in keep[:3]]).to_pylist()
    with pytest.raises(ConfigError, match="name its directory .* in policy.distilled"):
        simulate(replace(both, policy=PolicyConfig(model="scripted-world")), ds,
                 tmp_path / "never", progress=False)
    with pytest.raises(MfrayError, match="cannot read the distilled policy .*nowhere"):
        simulate(replace(both, policy=PolicyConfig(model="scripted-world",
                                                   distilled=str(tmp_path / "nowhere"))),
                 ds, tmp_path / "never", progress=False)


def test_the_command_reports_the_fit_and_refuses_a_run_without_a_prompt_log(
        small_world_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    simulate(_cfg(small_world_dir, "scripted-world", log=True), read_dataset(small_world_dir),
             tmp_path / "t", progress=False)
    assert main(["distill", str(tmp_path / "t"), "--out", str(tmp_path / "s")]) == 0
    out = capsys.readouterr().out
    assert f"simulate with --set policy.model={tmp_path / 's'}" in out
    assert "support/deny/query/comment:" in out and "KL(teacher || distilled)" in out
    # --simulate over an earlier fit's simulation is refused before fitting again
    (tmp_path / "s" / "run").mkdir()
    assert main(["distill", str(tmp_path / "t"), "--out", str(tmp_path / "s"),
                 "--simulate"]) == 2
    assert "holds the simulation of an earlier fit" in capsys.readouterr().err
    (tmp_path / "t" / "prompts.jsonl").unlink()
    with pytest.raises(MfrayError, match="policy.log_prompts=true"):
        distill(tmp_path / "t", tmp_path / "never")
