"""mfray probe: a policy that follows the crowd is sensitive to the mean field it is shown,
one that ignores it is not."""

from __future__ import annotations

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
