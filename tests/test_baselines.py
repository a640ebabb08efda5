"""The scripted world-rule policy reads the mean field's shares by name, in any order."""

from __future__ import annotations

import numpy as np

from mfray.baselines import _stance_shares, world_rule_model
from mfray.data.synthetic import STANCE_OPTIONS, WorldParams, generate
from mfray.meanfield import NumericMeanField


def test_shares_are_read_by_name_whatever_the_order() -> None:
    space = {"stance": STANCE_OPTIONS}
    mf = NumericMeanField({"stance": (19, 7, 8, 66)})
    prompt = f"How the other users have reacted so far:\n{mf.render(space)}\n\nPersona"
    assert mf.render(space).startswith("stance: comment")  # not in label order
    np.testing.assert_allclose(_stance_shares(prompt), [0.19, 0.07, 0.08, 0.66])
    assert _stance_shares("stance: no reactions yet\n") is None
    world, _ = generate(WorldParams(n_events=2, min_agents=60, max_agents=60))
    model = world_rule_model(world)
    crowd = model.score([prompt.replace(mf.render(space), NumericMeanField(
        {"stance": (1, 1, 1, 97)}).render(space))], STANCE_OPTIONS)
    alone = model.score(["Persona"], STANCE_OPTIONS)
    assert np.exp(crowd[0][3]) > np.exp(alone[0][3])  # more comment when the crowd comments
