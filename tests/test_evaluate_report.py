from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from mfray.config import EvalConfig, RunConfig, SimConfig
from mfray.data.schema import read_dataset
from mfray.engine import simulate
from mfray.evaluate.report import (
    console_summary,
    evaluate,
    markdown_table,
    sim_metrics,
    write_report,
)

OPTIONS = ("support", "deny", "query", "comment")


def _rows(real, sampled, probs, rounds):
    lab = lambda x: {"stance": x}
    return {"real": [lab(x) for x in real], "action": [lab(x) for x in sampled],
            "probs": [{"stance": p} for p in probs], "round": rounds}


def test_sim_metrics_by_hand() -> None:
    real = ["support", "support", "deny", "comment"]
    sampled = ["support", "deny", "deny", "comment"]
    probs = [[0.5, 0.5, 0, 0], [0.5, 0.5, 0, 0], [0, 1, 0, 0], [0, 0, 0, 1]]
    m = sim_metrics(_rows(real, sampled, probs, [3, 3, 4, 4]), "stance", OPTIONS, "probs")
    # real = (2, 1, 0, 1)/4 ; sim from probs = (1, 2, 0, 1)/4
    assert m["tv"] == pytest.approx(0.25)
    p, q = np.array([0.5, 0.25, 1e-6, 0.25]), np.array([0.25, 0.5, 1e-6, 0.25])
    p, q = (p + 0) / p.sum(), q / q.sum()
    assert m["kl"] == pytest.approx(float(np.sum(p * np.log(p / q))), rel=1e-4)
    # NLL: -[ln .5 + ln .5 + ln 1 + ln 1]/4
    assert m["nll"] == pytest.approx(-2 * math.log(0.5) / 4)
    assert m["f1_micro"] == pytest.approx(0.75)
    # horizons over 2 rollout rounds: short = round 3, mid = round 4, long empty
    assert not math.isnan(m["kl_short"]) and math.isnan(m["kl_long"])
    # the sampling floor comes from the real replies alone: (2, 1, 0, 1)
    from mfray.evaluate.metrics import kl_floor
    assert m["kl_floor"] == kl_floor([2, 1, 0, 1]) and m["kl_floor"] > 0.1
    other = sim_metrics(_rows(real, real, [[0, 0, 0, 1]] * 4, [3, 3, 4, 4]), "stance",
                        OPTIONS, "probs")
    assert other["kl_floor"] == m["kl_floor"]


def test_labels_and_probs_sources_differ() -> None:
    rows = _rows(["support", "deny"], ["support", "support"],
                 [[0.5, 0.5, 0, 0], [0.5, 0.5, 0, 0]], [0, 0])
    by_probs = sim_metrics(rows, "stance", OPTIONS, "probs")
    by_labels = sim_metrics(rows, "stance", OPTIONS, "labels")
    assert by_probs["kl"] == pytest.approx(0.0, abs=1e-5)
    assert by_labels["kl"] > 1.0


@pytest.fixture(scope="module")
def demo_run(small_world_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    cfg = RunConfig(sim=SimConfig(data=str(small_world_dir), seeds=(0, 1), warmup=32,
                                  variants=("oracle", "surrogate-state", "base-rate")))
    out = tmp_path_factory.mktemp("run") / "run"
    simulate(cfg, read_dataset(small_world_dir), out, progress=False)
    return out


def test_evaluate_orders_variants_as_the_world_says(demo_run: Path) -> None:
    ev = evaluate(demo_run, EvalConfig(n_bootstrap=200))
    kl = {e["variant"]: e for e in ev.summary}
    assert set(kl) == {"oracle", "surrogate-state", "base-rate"}
    assert all(e["n_events"] == 4 for e in kl.values())
    # the synthetic world's known effect: knowing the event and the crowd beats not knowing
    assert kl["oracle"]["kl"] < kl["surrogate-state"]["kl"]
    for e in kl.values():
        assert e["kl_lo"] <= e["kl"] <= e["kl_hi"]
    # per simulation: 4 events x 2 seeds x 3 variants x 1 dimension
    assert len(ev.per_sim) == 24


def test_report_files_and_plot(demo_run: Path, tmp_path: Path) -> None:
    ev = evaluate(demo_run, EvalConfig(source="labels", n_bootstrap=200))
    paths = write_report(ev, tmp_path / "eval")
    assert paths["plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert paths["plot"].stat().st_size > 10_000
    assert paths["plot_events"].read_bytes()[:4] == b"\x89PNG"
    md = paths["markdown"].read_text()
    assert "| oracle | 4 |" in md
    assert paths["summary"].read_text().startswith('"variant"')
    assert markdown_table(ev.summary, "stance").count("\n") == 2 + 3 - 1
    # the console's summary: one short line per variant, then where the full tables are
    text = console_summary(ev, list(paths.values()))
    assert max(map(len, text.splitlines())) <= 100
    for e in ev.summary:
        (line,) = [ln for ln in text.splitlines() if ln.split()[:1] == [e["variant"]]]
        assert f"{e['kl']:.3f} [{e['kl_lo']:.3f}, {e['kl_hi']:.3f}]" in line
        assert line.split()[-3:] == [f"{e['js']:.3f}", f"{e['tv']:.3f}", f"{e['f1_macro']:.3f}"]
    flat = " ".join(text.split())  # the files' line wraps at 100 characters
    assert f"in {tmp_path / 'eval'}/: per_simulation.csv" in flat and "kl_by_event.png" in flat


def test_share_curves_follow_each_event_on_its_own_rounds(demo_run: Path) -> None:
    from mfray.store import RunStore

    ev = evaluate(demo_run, EvalConfig(n_bootstrap=200))
    d = RunStore.open(demo_run).read_decisions(columns=["event_id", "round"]).to_pydict()
    last: dict[str, int] = {}
    for e, r in zip(d["event_id"], d["round"], strict=True):
        last[e] = max(last.get(e, 0), r)
    assert len(set(last.values())) > 1  # the world's events differ in length
    assert {k for k in ev.curves} == {(v, "stance", e) for v in ("oracle", "surrogate-state",
                                                                  "base-rate") for e in last}
    for (_, _, event), c in ev.curves.items():
        assert c["real"].shape == c["sim"].shape == (last[event] + 1, 4)
        assert np.allclose(c["real"].sum(axis=1), 1.0)
    assert ev.interventions == {} and ev.cfg.n_bootstrap == 200


def test_interventions_by_variant_label() -> None:
    from mfray.evaluate.report import _interventions

    sim = {"variants": ["mf", "state"], "interventions": [{"name": "deny8", "round": 3},
                                                          {"name": "edit", "round": 1}]}
    assert _interventions(sim, {"mf", "mf+deny8", "state", "state+edit"}) == {
        "mf+deny8": (("deny8", 3),), "state+edit": (("edit", 1),)}
    assert _interventions({}, {"mf"}) == {}


def test_evaluate_an_empty_or_missing_run(tmp_path: Path) -> None:
    from mfray.errors import MfrayError

    with pytest.raises(MfrayError):
        evaluate(tmp_path / "nope")


def test_single_event_intervals_are_over_seeds() -> None:
    from mfray.evaluate.report import METRICS, summarise

    rows = [{"variant": "mf", "dimension": "stance", "event_id": "e", "seed": s,
             **dict.fromkeys(METRICS, float(s)), "kl_short": 1.0, "kl_mid": 1.0,
             "kl_long": 1.0} for s in range(5)]
    (entry,) = summarise(rows, EvalConfig(n_bootstrap=200))
    assert entry["interval_over"] == "seeds" and entry["kl"] == pytest.approx(2.0)
    assert entry["kl_lo"] < 2.0 < entry["kl_hi"]
    two = rows + [dict(rows[0], event_id="f")]
    assert all(e["interval_over"] == "events" for e in summarise(two, EvalConfig(n_bootstrap=200)))
