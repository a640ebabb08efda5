"""Interventions: the pure update, config checks, and the effect against common-random-number
twins in a real run."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from mfray.config import PolicyConfig, ResourcesConfig, RunConfig, SimConfig, load_config
from mfray.data.schema import read_dataset
from mfray.engine import simulate
from mfray.errors import ConfigError
from mfray.evaluate.effects import format_effects, intervention_effects
from mfray.interventions import Intervention, apply
from mfray.meanfield import NumericMeanField
from mfray.policy import PastAction
from mfray.schedule import build_units

SPACE = {"stance": ("support", "deny", "query", "comment")}


def test_inject_adds_actions_to_the_mean_field_and_the_window() -> None:
    mf = NumericMeanField.empty(SPACE).update(SPACE, {"stance": ["support", "comment"]})
    history = [PastAction({"stance": "support"}, "a", 10)]
    iv = Intervention("counter", round=2, label="deny", count=3, text="This is false.")
    new_mf, new_hist = apply(iv, SPACE, mf, history)
    assert new_mf.counts["stance"] == (1, 3, 0, 1)
    assert len(new_hist) == 4 and new_hist[-1].text == "This is false."
    assert mf.counts["stance"] == (1, 0, 0, 1) and len(history) == 1  # inputs untouched


def test_edit_sets_the_shares() -> None:
    mf = NumericMeanField.empty(SPACE).update(SPACE, {"stance": ["support"] * 10})
    iv = Intervention("calm", round=0, kind="edit", shares=(0.1, 0.2, 0.3, 0.4))
    new_mf, _ = apply(iv, SPACE, mf, [])
    np.testing.assert_allclose(new_mf.shares("stance"), [0.1, 0.2, 0.3, 0.4])


def test_config_checks() -> None:
    with pytest.raises(ConfigError, match="count >= 1"):
        Intervention("x", round=1, label="deny")
    with pytest.raises(ConfigError, match="sum to 1"):
        Intervention("x", round=1, kind="edit", shares=(0.5, 0.4))
    with pytest.raises(ConfigError, match="not one of"):
        Intervention("x", round=1, label="maybe", count=2).check(SPACE)
    override = "sim.interventions=[{name: deny5, round: 3, label: deny, count: 5}]"
    cfg = load_config(None, [override])
    assert cfg.sim.interventions[0] == Intervention("deny5", round=3, label="deny", count=5)
    with pytest.raises(ConfigError, match="share a name"):
        SimConfig(interventions=(cfg.sim.interventions[0],) * 2)


def test_an_intervention_after_the_last_round_is_refused(small_world_dir: Path) -> None:
    """It would change nothing, and its effect would read +nan: refused before the run."""
    from mfray.engine.layout import plan

    ds = read_dataset(small_world_dir)
    sim = SimConfig(data=str(small_world_dir), variants=("mf",), warmup=20)
    longest = max(-(-u.n_agents // sim.round_size) for u in build_units(ds, sim))
    ok = Intervention("ok", round=longest - 2, label="deny", count=2)
    assert plan(RunConfig(sim=replace(sim, interventions=(ok,))), ds)
    late = Intervention("late", round=longest - 1, label="deny", count=2)
    with pytest.raises(ConfigError, match=rf"\['late'\] act after a round >= {longest - 1}"):
        plan(RunConfig(sim=replace(sim, interventions=(ok, late))), ds)


def _run(data: Path, out: Path, interventions: tuple = ()):
    cfg = RunConfig(sim=SimConfig(data=str(data), variants=("mf",), seeds=(0, 1), warmup=20,
                                  interventions=interventions),
                    policy=PolicyConfig(model="scripted-world"),
                    resources=ResourcesConfig(num_cpus=2))
    return simulate(cfg, read_dataset(data), out, progress=False)


def _key(rows: list[dict]) -> dict:
    return {(r["event_id"], r["seed"], r["agent_index"]): (r["action"], r["probs"])
            for r in rows}


def test_injecting_deny_raises_the_deny_share_against_identical_twins(
        small_world_dir: Path, tmp_path: Path) -> None:
    iv = Intervention("deny40", round=2, label="deny", count=40)
    plain = _run(small_world_dir, tmp_path / "plain")
    run = _run(small_world_dir, tmp_path / "iv", (iv,))
    rows = run.read_decisions().to_pylist()
    twin = [r for r in rows if r["variant"] == "mf"]
    treated = [r for r in rows if r["variant"] == "mf+deny40"]
    # the untouched twins are the run without any intervention, decision for decision
    assert _key(twin) == _key(plain.read_decisions().to_pylist())
    # up to the intervention round the treated simulations are their twins
    assert _key([r for r in twin if r["round"] <= 2]) == _key(
        [r for r in treated if r["round"] <= 2])
    # afterwards the deny share rises; the expected rise, per (event, seed) pair, is the rise of
    # the mean deny probability of the same agents
    def deny_prob(rs: list[dict], event: str, seed: int) -> float:
        return float(np.mean([r["probs"]["stance"][1] for r in rs if r["round"] > 2
                              and r["event_id"] == event and r["seed"] == seed]))

    pairs = sorted({(r["event_id"], r["seed"]) for r in treated})
    expected = np.mean([deny_prob(treated, *p) - deny_prob(twin, *p) for p in pairs])
    (effect,) = intervention_effects(run.run_dir)
    assert effect["pairs"] == len(pairs) == 8 and effect["target"] == "stance=deny"
    assert expected > 0.05
    # sampling noise of a share over ~50 agents per pair, averaged over 8 pairs: about 0.02
    assert effect["effect"] == pytest.approx(expected, abs=0.06)
    assert effect["low"] > 0
    assert "deny40" in format_effects([effect])


def test_crowd_follows_an_edited_mean_field(small_world_dir: Path, tmp_path: Path) -> None:
    """``crowd`` has no model but reads the mean field, so an edit moves it: the round after
    the edit it gives its shift-robust forecast of the edited shares, its twin does not."""
    from mfray.references import crowd_forecast

    edit = Intervention("alldeny", round=2, kind="edit", shares=(0.0, 1.0, 0.0, 0.0))
    cfg = RunConfig(sim=SimConfig(data=str(small_world_dir), variants=("crowd", "base-rate"),
                                  seeds=(0,), warmup=20, events=("synth-00",),
                                  interventions=(edit,)),
                    resources=ResourcesConfig(num_cpus=2))
    store = simulate(cfg, read_dataset(small_world_dir), tmp_path / "r", progress=False)
    rows = store.read_decisions().to_pylist()

    def probs(variant: str, round_: int) -> np.ndarray:
        (p,) = {tuple(r["probs"]["stance"]) for r in rows
                if r["variant"] == variant and r["round"] == round_}
        return np.array(p)

    (ref,) = [r for r in store.read_references().to_pylist() if r["variant"] == "crowd"]
    n = sum(sum(r["counts"]["stance"]) for r in store.read_rounds().to_pylist()
            if r["variant"] == "crowd+alldeny" and r["round"] <= 2)
    want = crowd_forecast(np.array([0.0, 1.0, 0.0, 0.0]), n, np.asarray(ref["probs"]),
                          ref["crowd_prior"], ref["like_training"])
    np.testing.assert_allclose(probs("crowd+alldeny", 3), want, atol=1e-12)
    np.testing.assert_array_equal(probs("crowd+alldeny", 2), probs("crowd", 2))
    assert probs("crowd+alldeny", 3)[1] > probs("crowd", 3)[1] + 0.5
