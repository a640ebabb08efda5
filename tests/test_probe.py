"""mfray probe: a policy that follows the crowd is sensitive to the mean field it is shown,
one that ignores it is not."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from mfray.baselines import load_world, world_rule_model
from mfray.cli import main
from mfray.config import SimConfig
from mfray.data.schema import read_dataset
from mfray.errors import ConfigError
from mfray.llm import ScriptedModel
from mfray.probe import probe
from mfray.schedule import build_units


def test_crowd_follower_versus_a_policy_that_ignores_the_mean_field(
        herding_world: Path) -> None:
    ds = read_dataset(herding_world)
    follower = probe(world_rule_model(load_world("scripted-world", ds)), ds,
                     SimConfig(data=str(herding_world)), n=16)
    # the world's rule: logit += herding x (share - base share); each option rises when shown
    assert all(s > 0.1 for s in follower.sensitivity.values()) and follower.mean > 0.2
    for k, o in enumerate(follower.options):
        assert np.argmax([follower.shown[q][k] for q in follower.options]) == k, o
    deaf = probe(ScriptedModel(lambda p, opts: np.ones(len(opts))), ds,
                 SimConfig(data=str(herding_world)), n=16)
    assert deaf.sensitivity == dict.fromkeys(deaf.options, 0.0)
    assert "sensitivity: support" in follower.markdown()
    with pytest.raises(ConfigError, match="strength"):
        probe(ScriptedModel(), ds, SimConfig(data=str(herding_world)), strength=0.1)


def test_probe_command(herding_world: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["probe", "--data", str(herding_world), "--model", "scripted-world",
                 "--n", "8"]) == 0
    out = capsys.readouterr().out
    assert "| mean field favours |" in out and "mean +" in out


def test_drift_of_a_deaf_policy_and_of_its_calibrated_twin(small_world_dir: Path) -> None:
    """A policy that always answers the even mix walks the mean field there: after R rounds of
    B agents from W decisions at the real mix s, it is (W·s + R·B·even) / (W + R·B), so it
    moves by R·B / (W + R·B) × TV(s, even). The same policy calibrated (mf-cal) gives each
    round the shift-robust crowd forecast instead, which stays near where it starts."""
    from mfray.probe import drift

    ds = read_dataset(small_world_dir)
    sim = SimConfig(data=str(small_world_dir), warmup=30, round_size=8)
    deaf = ScriptedModel(lambda p, opts: np.ones(len(opts)))
    walked = drift(deaf, ds, sim, "mf", rounds=5, start_weight=30)
    assert set(walked.tv) == set(ds.event_ids())
    for e, tv in walked.tv.items():
        start = np.asarray(walked.start[e])
        even_tv = 0.5 * np.abs(start - 0.25).sum()
        assert tv == pytest.approx(40 / 70 * even_tv, rel=1e-9)
    # by default worth all of an event's labelled replies: W = its replies, the same rule
    heavy = drift(deaf, ds, sim, "mf", rounds=5)
    agents = {u.event_id: u.agents["labels"].to_pylist()
              for u in build_units(ds, replace(sim, unit="event"))}
    for e, tv in heavy.tv.items():
        n = sum(1 for x in agents[e] if x and x.get("stance"))
        even_tv = 0.5 * np.abs(np.asarray(heavy.start[e]) - 0.25).sum()
        assert n > 30 and tv == pytest.approx(40 / (n + 40) * even_tv, rel=1e-9)
    held = drift(deaf, ds, sim, "mf-cal", rounds=5, start_weight=30)
    assert max(held.tv.values()) < 0.5 * max(walked.tv.values())
    assert "largest move" in held.markdown() and "| event | real mix |" in held.markdown()
    with pytest.raises(ConfigError, match="does not read the numeric mean field"):
        drift(deaf, ds, sim, "state")


def test_drift_command(small_world_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["probe", "--data", str(small_world_dir), "--model", "scripted",
                 "--drift", "mf,mf-cal", "--rounds", "2"]) == 0
    out = capsys.readouterr().out
    assert out.count("largest move") == 2 and "mf-cal, 2 rounds (stance)" in out
