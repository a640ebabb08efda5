"""The model interface and the scripted model (mfray/llm/base.py)."""

from __future__ import annotations

import numpy as np
import pytest

from mfray.llm import LanguageModel, ModelError, ScriptedModel

YES_NO = [" yes", " no"]


def test_scripted_scores_are_deterministic_normalised_and_per_prompt():
    m = ScriptedModel()
    a = m.score(["p1", "p2"], ["x", "y", "z"])
    assert a.shape == (2, 3)
    np.testing.assert_allclose(np.exp(a).sum(1), 1.0)
    np.testing.assert_array_equal(a, ScriptedModel().score(["p1", "p2"], ["x", "y", "z"]))
    np.testing.assert_array_equal(a[1], m.score(["p2"], ["x", "y", "z"])[0])  # batch-free
    assert not np.allclose(a[0], a[1])
    assert isinstance(m, LanguageModel)


def test_scripted_custom_functions():
    m = ScriptedModel(lambda p, opts: [3.0, 1.0] if "yes" in p else [0.0, 2.0],
                      lambda p, s: f"{p}#{s}")
    np.testing.assert_allclose(np.exp(m.score(["say yes", "say no"], YES_NO)),
                               [[0.75, 0.25], [0.0, 1.0]])
    assert m.generate(["a", "b"], seeds=[4, 5]) == ["a#4", "b#5"]
    assert m.generate(["a"], temperature=0) == ["a#0"]
    with pytest.raises(ModelError):
        ScriptedModel(lambda p, opts: [-1.0, 2.0]).score(["p"], YES_NO)


def test_scripted_failures_depend_on_the_prompt_only():
    m = ScriptedModel(fail_when=lambda p: "bad" in p)
    with pytest.raises(ModelError) as e:
        m.score(["ok", "bad one", "fine"], YES_NO)
    assert e.value.indices == (1,)
    assert m.score(["ok", "fine"], YES_NO).shape == (2, 2)
    every = ScriptedModel(fail_every=3)
    prompts = [f"prompt {i}" for i in range(60)]
    failing = {p for p in prompts if _raises(every, [p])}
    assert 5 < len(failing) < 40  # about a third
    with pytest.raises(ModelError) as e:
        every.generate(prompts, temperature=0)
    assert {prompts[i] for i in e.value.indices} == failing


def _raises(m: ScriptedModel, prompts: list[str]) -> bool:
    try:
        m.score(prompts, YES_NO)
    except ModelError:
        return True
    return False


def test_argument_checks():
    m = ScriptedModel()
    for bad in ([], ["a", "a"], ["a", ""]):
        with pytest.raises(ValueError):
            m.score(["p"], bad)
    with pytest.raises(ValueError, match="seeds are required"):
        m.generate(["p"], temperature=0.7)
    with pytest.raises(ValueError):
        m.generate(["p"], seeds=[1, 2])
    with pytest.raises(ValueError):
        m.generate(["p"], seeds=[1], top_p=0.0)
