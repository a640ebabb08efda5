"""The comparison table and the forecasting report on a scripted run of the synthetic world."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from mfray.cli import main
from mfray.config import EvalConfig, PolicyConfig, ResourcesConfig, RunConfig, SimConfig
from mfray.data.schema import read_dataset
from mfray.engine import simulate
from mfray.evaluate.compare import (
    PNG_MAGIC,
    compare,
    compare_summary,
    comparison_markdown,
    forecast,
    relative_change,
    variant_order,
    write_comparison,
    write_forecast,
)
from mfray.store import RunStore

VARIANTS = ("persistence", "mf", "recent", "base-rate", "state", "crowd", "oracle")
CFG = EvalConfig(n_bootstrap=200)


@pytest.fixture(scope="module")
def run_dir(small_world_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    cfg = RunConfig(sim=SimConfig(data=str(small_world_dir), variants=VARIANTS, seeds=(0, 1),
                                  round_size=16, warmup=20),
                    policy=PolicyConfig(model="scripted"),
                    resources=ResourcesConfig(num_cpus=2))
    out = tmp_path_factory.mktemp("cmp") / "run"
    simulate(cfg, read_dataset(small_world_dir), out, progress=False)
    return out


def test_variant_order_follows_the_paper() -> None:
    assert variant_order(["zeta", "persistence", "sft", "mf-text", "state", "base-rate",
                          "mf", "alpha", "warmup", "mf-cal"]) == [
        "state", "mf", "mf-text", "mf-cal", "sft", "base-rate", "warmup", "persistence",
        "alpha", "zeta"]


def test_relative_change_by_hand_and_degenerate_cases() -> None:
    point, lo, hi = relative_change([1.0, 2.0, 3.0], [2.0, 2.0, 4.0], CFG)
    assert point == pytest.approx(100 * (2.0 - 8 / 3) / (8 / 3))
    assert lo <= point <= hi and lo < hi
    assert relative_change([1.0], [2.0], CFG) == (-50.0, -50.0, -50.0)
    assert all(math.isnan(x) for x in relative_change([], [], CFG))


def test_table_rows_order_and_relative_change(run_dir: Path) -> None:
    comp = compare(run_dir, CFG)
    rows = [r for r in comp.rows if r["dimension"] == "stance"]
    assert [r["variant"] for r in rows] == ["state", "recent", "mf", "base-rate", "persistence",
                                            "crowd", "oracle"]
    mf = rows[2]
    best = min(("state", "recent"), key=lambda v: next(r["kl"] for r in rows
                                                        if r["variant"] == v))
    assert mf["rel_kl_llm_base"] == best
    # by hand: seeds averaged per event, then mean over events, then the relative change
    per = comp.evaluation.per_sim

    def event_kl(variant: str) -> dict[str, float]:
        out: dict[str, list[float]] = {}
        for r in per:
            if r["variant"] == variant:
                out.setdefault(r["event_id"], []).append(r["kl"])
        return {e: float(np.mean(v)) for e, v in out.items()}

    mine, theirs = event_kl("mf"), event_kl(best)
    assert len(mine) == 4
    a = np.mean([mine[e] for e in mine])
    b = np.mean([theirs[e] for e in mine])
    assert mf["rel_kl_llm"] == pytest.approx(100 * (a - b) / b)
    assert mf["rel_kl_llm_lo"] <= mf["rel_kl_llm"] <= mf["rel_kl_llm_hi"]
    refs = {r["variant"]: r["kl"] for r in rows if r["variant"] in ("base-rate", "persistence")}
    assert mf["rel_kl_ref_base"] == min(refs, key=refs.get)  # crowd is shown, never the base
    assert mf["rel_kl_ref_lo"] <= mf["rel_kl_ref"] <= mf["rel_kl_ref_hi"]
    # only mean-field variants carry a change
    assert all(r["rel_kl_llm_base"] is None and math.isnan(r["rel_kl_llm"])
               for r in rows if r["variant"] != "mf")
    for r in rows:
        assert r["kl_lo"] <= r["kl"] <= r["kl_hi"]


def test_comparison_files(run_dir: Path, tmp_path: Path) -> None:
    comp = compare(run_dir, CFG)
    paths = write_comparison(comp, tmp_path / "cmp")
    assert set(paths) == {"markdown", "csv", "plot"}
    assert paths["plot"].read_bytes()[:8] == PNG_MAGIC
    md = paths["markdown"].read_text()
    lines = [ln for ln in md.splitlines() if ln.startswith("| ")]
    assert [ln.split(" | ")[0] for ln in lines[1:]] == [
        "| state", "| recent", "| mf", "| *base-rate*", "| *persistence*", "| *crowd*",
        "| *oracle*"]  # every variant without an LLM in italics, the world's rule too
    base = next(r["rel_kl_llm_base"] for r in comp.rows if r["variant"] == "mf")
    assert f" vs {base} |" in md
    # the floor line: the mean over events of each event's floor, one per event
    floors = {}
    for r in comp.evaluation.per_sim:
        floors.setdefault(r["event_id"], set()).add(round(r["kl_floor"], 12))
    assert all(len(v) == 1 for v in floors.values())  # the same for every variant and seed
    mean = np.mean([v.pop() for v in floors.values()])
    f = comp.floors["stance"]
    assert f["n_events"] == len(floors) and f["kl_floor"] == pytest.approx(mean)
    assert f["kl_floor_lo"] <= f["kl_floor"] <= f["kl_floor_hi"]
    assert (f"for the {len(floors)} event(s)' real replies: {mean:.3f} "
            f"[{f['kl_floor_lo']:.3f}, {f['kl_floor_hi']:.3f}]") in md
    csv = paths["csv"].read_text().splitlines()
    assert len(csv) == 1 + len(VARIANTS) and "rel_kl_llm" in csv[0]
    # the console's summary: KL [interval] per variant, ΔKL for mf, the floor, the files
    text = compare_summary(comp, list(paths.values()))
    lines = text.splitlines()
    assert max(map(len, lines)) <= 100
    ref = next(r["rel_kl_ref_base"] for r in comp.rows if r["variant"] == "mf")
    assert f"ΔKL % vs {base}" in lines[1] and f"ΔKL % vs {ref}" in lines[1]
    mf = next(r for r in comp.rows if r["variant"] == "mf")
    (mf_line,) = [ln for ln in lines if ln.split()[:1] == ["mf"]]
    assert f"{mf['rel_kl_llm']:+.1f} [{mf['rel_kl_llm_lo']:+.1f}, " in mf_line
    assert [ln.split()[0] for ln in lines[2:2 + len(VARIANTS)]] == [
        "state", "recent", "mf", "base-rate", "persistence", "crowd", "oracle"]
    assert f"sampling floor of KL: {mean:.3f}" in text and "comparison.png" in text
    assert "Recommended variant: mf-cal (not in this comparison;" in text


def test_the_recommended_variant_is_named_with_its_kl() -> None:
    from mfray.evaluate.compare import Comparison, recommended

    row = {"variant": "mf-cal", "dimension": "stance", "kl": 0.05, "kl_lo": 0.04, "kl_hi": 0.07}
    comp = Comparison({"stance": ("a", "b")}, [row], None, {})  # type: ignore[arg-type]
    assert recommended(comp) == ("Recommended variant: mf-cal (KL 0.050 [0.040, 0.070] here; "
                                 "results/shift-robust.md).")


def test_no_llm_baseline_says_n_a(small_world_dir: Path, tmp_path: Path) -> None:
    cfg = RunConfig(sim=SimConfig(data=str(small_world_dir), variants=("mf", "base-rate"),
                                  seeds=(0,), events=("synth-00",), warmup=20),
                    policy=PolicyConfig(model="scripted"), resources=ResourcesConfig(num_cpus=2))
    simulate(cfg, read_dataset(small_world_dir), tmp_path / "r", progress=False)
    comp = compare(tmp_path / "r", CFG)
    mf = next(r for r in comp.rows if r["variant"] == "mf")
    assert mf["rel_kl_llm_base"] is None and mf["rel_kl_ref_base"] == "base-rate"
    md = write_comparison(comp, tmp_path / "out")["markdown"].read_text()
    assert "| n/a |" in md


def test_forecast_horizons_and_real_shares(run_dir: Path, tmp_path: Path) -> None:
    fc = forecast(run_dir, CFG)
    d = RunStore.open(run_dir).read_decisions().to_pylist()
    roll = [r for r in d if not r["is_warmup"]]
    rollout_rounds = sorted({r["round"] for r in roll})
    assert fc.rounds.tolist() == rollout_rounds and rollout_rounds[0] == 1  # W=20, B=16
    covered = np.concatenate(list(fc.horizons.values())).tolist()
    assert covered == rollout_rounds  # contiguous, no overlap, nothing left out
    assert fc.variants == ["state", "recent", "mf", "base-rate", "persistence", "crowd",
                           "oracle"]
    # real shares straight from the decisions table, one label per (event, agent)
    options = fc.label_space["stance"]
    agents = {(r["event_id"], r["agent_index"]): r for r in roll}
    for h, hr in fc.horizons.items():
        labels = [a["real"]["stance"] for a in agents.values() if a["round"] in set(hr.tolist())]
        want = {o: labels.count(o) / len(labels) for o in options}
        got = {r["option"]: r["real_share"] for r in fc.rows
               if r["horizon"] == h and r["variant"] == "mf"}
        assert got == pytest.approx(want)
    # simulated shares sum to 1 per horizon, and the KL is finite
    for v in fc.variants:
        for h in fc.horizons:
            sel = [r for r in fc.rows if r["variant"] == v and r["horizon"] == h]
            assert sum(r["sim_share"] for r in sel) == pytest.approx(1.0)
            assert math.isfinite(sel[0]["kl"]) and sel[0]["kl"] >= 0
    first = [a["real"]["stance"] for a in agents.values() if a["round"] == rollout_rounds[0]]
    assert fc.real["stance"][0] == pytest.approx([first.count(o) / len(first) for o in options])
    paths = write_forecast(fc, tmp_path / "fc")
    assert paths["plot"].read_bytes()[:8] == PNG_MAGIC
    assert "| short |" in paths["markdown"].read_text()
    assert len(paths["csv"].read_text().splitlines()) == 1 + len(fc.rows)


def test_several_runs_read_as_one_with_renames(run_dir: Path, small_world_dir: Path,
                                               tmp_path: Path) -> None:
    """A second run (say, with a tuned adapter) joins the table under new variant names."""
    from mfray.errors import DataError
    from mfray.evaluate.report import evaluate, parse_run

    cfg = RunConfig(sim=SimConfig(data=str(small_world_dir), variants=("state", "mf"),
                                  seeds=(0, 1), round_size=16, warmup=20),
                    policy=PolicyConfig(model="scripted"), resources=ResourcesConfig(num_cpus=2))
    simulate(cfg, read_dataset(small_world_dir), tmp_path / "tuned", progress=False)
    assert parse_run("a/b:state=sft,mf=mf-tuned") == (Path("a/b"), {"state": "sft",
                                                                    "mf": "mf-tuned"})
    assert parse_run("/x/y") == (Path("/x/y"), {})
    both = [run_dir, f"{tmp_path / 'tuned'}:state=sft,mf=mf-tuned"]
    comp = compare(both, CFG)
    variants = [r["variant"] for r in comp.rows]
    assert variants == ["state", "recent", "mf", "sft", "base-rate", "persistence", "crowd",
                        "mf-tuned", "oracle"]
    # each run's rows are evaluated exactly as alone
    alone = {r["variant"]: r["kl"] for r in evaluate(tmp_path / "tuned", CFG).summary}
    rows = {r["variant"]: r for r in comp.rows}
    assert rows["sft"]["kl"] == pytest.approx(alone["state"])
    assert rows["mf-tuned"]["kl"] == pytest.approx(alone["mf"])
    assert rows["mf-tuned"]["rel_kl_llm_base"] in ("state", "recent", "sft")
    assert forecast(both, CFG).variants == variants
    with pytest.raises(DataError, match="already come from"):
        compare([run_dir, tmp_path / "tuned"], CFG)
    with pytest.raises(DataError, match=r"would merge two variants of the run into \['state'\]"):
        compare([f"{tmp_path / 'tuned'}:mf=state"], CFG)
    swapped = {r["variant"]: r["kl"] for r in compare(
        [f"{tmp_path / 'tuned'}:mf=state,state=mf"], CFG).rows}  # a swap merges nothing
    assert swapped["state"] == pytest.approx(alone["mf"])


def test_runs_of_different_events_pool_into_one_table(small_world_dir: Path,
                                                      tmp_path: Path) -> None:
    """Leave-one-event-out folds: each fold's run simulates its own held-out event under the
    same variant names; read together they are one table over the events."""
    from mfray.evaluate.report import evaluate

    runs = []
    for event in ("synth-00", "synth-01"):
        cfg = RunConfig(sim=SimConfig(data=str(small_world_dir), variants=("state", "mf"),
                                      seeds=(0,), events=(event,), round_size=16, warmup=20),
                        policy=PolicyConfig(model="scripted"),
                        resources=ResourcesConfig(num_cpus=2))
        simulate(cfg, read_dataset(small_world_dir), tmp_path / event, progress=False)
        runs.append(tmp_path / event)
    pooled = evaluate(runs, CFG)
    alone = [r for run in runs for r in evaluate(run, CFG).per_sim]
    assert sorted((r["event_id"], r["variant"], r["kl"]) for r in pooled.per_sim) == \
        sorted((r["event_id"], r["variant"], r["kl"]) for r in alone)  # each as alone
    rows = {r["variant"]: r for r in pooled.summary}
    assert rows["mf"]["n_events"] == 2 and rows["mf"]["interval_over"] == "events"
    assert rows["mf"]["n_sims"] == 2
    assert rows["mf"]["kl"] == pytest.approx(np.mean([r["kl"] for r in alone
                                                      if r["variant"] == "mf"]))


def test_runs_of_other_seeds_pool_and_a_repeated_seed_is_refused(small_world_dir: Path,
                                                                  tmp_path: Path) -> None:
    """Seeds added in a later run join the earlier one's; the same seed twice is an error."""
    from mfray.errors import DataError
    from mfray.evaluate.report import evaluate

    def run(seeds: tuple[int, ...], name: str) -> Path:
        cfg = RunConfig(sim=SimConfig(data=str(small_world_dir), variants=("mf",), seeds=seeds,
                                      events=("synth-00",), round_size=16, warmup=20),
                        policy=PolicyConfig(model="scripted"),
                        resources=ResourcesConfig(num_cpus=2))
        simulate(cfg, read_dataset(small_world_dir), tmp_path / name, progress=False)
        return tmp_path / name

    first, later, again = run((0,), "s0"), run((1, 2), "s12"), run((2,), "s2")
    together = run((0, 1, 2), "s012")
    pooled = evaluate([first, later], CFG)
    want = evaluate(together, CFG)
    assert len(pooled.per_sim) == 3
    assert {r["seed"]: r["kl"] for r in pooled.per_sim} == \
        pytest.approx({r["seed"]: r["kl"] for r in want.per_sim})
    assert pooled.summary[0]["kl"] == pytest.approx(want.summary[0]["kl"])
    assert pooled.summary[0]["n_events"] == 1 and pooled.summary[0]["n_sims"] == 3
    assert "| mf | 1 | 3 |" in comparison_markdown(compare([first, later], CFG), "stance")
    with pytest.raises(DataError, match=r"\['mf'\] of the same event\(s\) and seed"):
        evaluate([later, again], CFG)


def test_an_unfinished_run_is_read_with_a_note(small_world_dir: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    """Evaluating a run that is still going (or stopped) says how much of it is read."""
    from mfray.evaluate.report import evaluate

    cfg = RunConfig(sim=SimConfig(data=str(small_world_dir), variants=("mf",), seeds=(0,),
                                  events=("synth-00",), round_size=16, warmup=20),
                    policy=PolicyConfig(model="scripted"), resources=ResourcesConfig(num_cpus=2))
    simulate(cfg, read_dataset(small_world_dir), tmp_path / "part", progress=False,
             max_rounds=2)
    capsys.readouterr()
    assert evaluate(tmp_path / "part", CFG).per_sim
    assert f"run {tmp_path / 'part'} has status 'running'; reading its 2 completed rounds" in \
        capsys.readouterr().err
    # `mfray compare` reads the runs once for its table and its forecast: one note
    assert main(["compare", str(tmp_path / "part"), "--out", str(tmp_path / "cmp")]) == 0
    assert capsys.readouterr().err.count("has status 'running'") == 1
    assert (tmp_path / "cmp" / "forecast.md").is_file()
    simulate(cfg, read_dataset(small_world_dir), tmp_path / "part", progress=False,
             resume=True)
    capsys.readouterr()
    evaluate(tmp_path / "part", CFG)
    assert "note" not in capsys.readouterr().err
