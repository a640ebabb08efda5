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


def test_crowd_fits_on_a_bounded_stable_set_of_training_events() -> None:
    """Leave one event out over many events: at most CROWD_FIT_EVENTS of them, chosen by name,
    never the held-out one, so most held-out events share one fit."""
    from mfray.baselines import CROWD_FIT_EVENTS, crowd_fit_events, training_events
    from mfray.config import SimConfig

    labels = {f"e{i:03d}": [] for i in range(CROWD_FIT_EVENTS + 20)}
    labels["e000~mix0"] = []  # a resampled copy is never a training event
    cfg = SimConfig()
    fits = {e: crowd_fit_events(e, labels, cfg) for e in labels}
    assert all(len(f) == CROWD_FIT_EVENTS and e not in f and "e000~mix0" not in f
               for e, f in fits.items())
    assert all(f == tuple(sorted(f)) for f in fits.values())
    assert len(set(fits.values())) <= CROWD_FIT_EVENTS + 1
    assert fits["e000~mix0"] == fits["e000"]  # a copy's fit leaves its source event out
    # few events: all the others, and sim.train_events when given
    small = {e: [] for e in ("a", "b", "c")}
    assert crowd_fit_events("b", small, cfg) == ("a", "c") == training_events("b", small, cfg)
    assert crowd_fit_events("b", small, SimConfig(train_events=("c",))) == ("c",)
