"""Retries as a model (mfray/llm/retry.py): a failing prompt is isolated with one bounded retry,
its failure kept as data, never filled in."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest

from mfray.llm import LanguageModel, ModelError, PartialAnswer, RetryingModel, ScriptedModel
from mfray.llm.retry import answers

OPTIONS = ["yes", "no"]
PROMPTS = ["fine a", "bad b", "fine c", "bad d"]


class Flaky:
    """Fails its first ``fail_calls`` calls with ``error``; counts every call's prompts."""

    model_id = "flaky"

    def __init__(self, error: ModelError, fail_calls: int = 1, short: bool = False) -> None:
        self.inner, self.error, self.fail_calls, self.short = ScriptedModel(), error, fail_calls, short
        self.calls: list[list[str]] = []

    def score(self, prompts: Sequence[str], options: Sequence[str]) -> np.ndarray:
        self.calls.append(list(prompts))
        if len(self.calls) <= self.fail_calls:
            raise self.error
        out = self.inner.score(prompts, options)
        return out[:-1] if self.short else out

    def generate(self, prompts: Sequence[str], **kw) -> list[str]:
        return self.inner.generate(prompts, **kw)

    def close(self) -> None:
        pass


def test_the_wrapper_is_a_model_and_passes_answers_through() -> None:
    inner = ScriptedModel()
    model = RetryingModel(inner)
    assert isinstance(model, LanguageModel) and model.model_id == inner.model_id
    np.testing.assert_array_equal(model.score(PROMPTS, OPTIONS), inner.score(PROMPTS, OPTIONS))
    assert model.generate(PROMPTS, seeds=[1, 2, 3, 4]) == inner.generate(PROMPTS,
                                                                         seeds=[1, 2, 3, 4])
    assert answers(lambda: model.score(PROMPTS, OPTIONS), 4)[1] == {}


def test_a_failing_prompt_is_isolated_with_one_retry() -> None:
    """What ``_sparing`` did: the prompts the error names fail with its text; the others are
    answered by a second call, exactly as alone."""
    inner = ScriptedModel(fail_when=lambda p: p.startswith("bad"))
    model = RetryingModel(inner)
    with pytest.raises(PartialAnswer) as e:
        model.score(PROMPTS, OPTIONS)
    assert e.value.indices == (1, 3) and inner.calls == 2
    assert e.value.answers[1] is None and e.value.answers[3] is None
    alone = ScriptedModel().score(["fine a", "fine c"], OPTIONS)
    np.testing.assert_array_equal(np.array([e.value.answers[0], e.value.answers[2]]), alone)
    got, errors = answers(lambda: model.score(PROMPTS, OPTIONS), 4)
    assert errors == dict.fromkeys([1, 3], "model error: scripted failure for 2 of 4 prompts")
    assert got[1] is None and np.array_equal(got[2], alone[1])


def test_retried_generations_keep_their_seeds() -> None:
    inner = ScriptedModel(fail_when=lambda p: p.startswith("bad"))
    got, errors = answers(lambda: RetryingModel(inner).generate(PROMPTS, seeds=[5, 6, 7, 8]), 4)
    assert set(errors) == {1, 3}
    assert [got[0], got[2]] == ScriptedModel().generate(["fine a", "fine c"], seeds=[5, 7])
    with pytest.raises(PartialAnswer):  # greedy: no seeds to pass on
        RetryingModel(inner).generate(PROMPTS, temperature=0)


def test_every_prompt_fails_when_none_is_named_or_the_retry_fails() -> None:
    unnamed = Flaky(ModelError("out of memory"))
    got, errors = answers(lambda: RetryingModel(unnamed).score(PROMPTS, OPTIONS), 4)
    assert got == [None] * 4 and errors == dict.fromkeys(range(4), "model error: out of memory")
    assert len(unnamed.calls) == 1  # no retry without names

    twice = Flaky(ModelError("bad row", indices=[0]), fail_calls=2)
    got, errors = answers(lambda: RetryingModel(twice).score(PROMPTS, OPTIONS), 4)
    assert got == [None] * 4 and errors == dict.fromkeys(range(4), "model error: bad row")
    assert twice.calls == [PROMPTS, PROMPTS[1:]]  # one retry, never a third call

    every = ScriptedModel(fail_when=lambda p: True)
    got, errors = answers(lambda: RetryingModel(every).score(PROMPTS, OPTIONS), 4)
    assert got == [None] * 4 and set(errors) == set(range(4)) and every.calls == 1


def test_an_answer_of_the_wrong_length_fails_the_whole_call() -> None:
    short = Flaky(ModelError("unused"), fail_calls=0, short=True)
    got, errors = answers(lambda: RetryingModel(short).score(PROMPTS, OPTIONS), 4)
    assert got == [None] * 4
    assert errors == dict.fromkeys(range(4), "model error: the model answered 3 of 4 prompts")


def test_the_inference_actor_fails_only_the_named_decision() -> None:
    from mfray.config import PolicyConfig
    from mfray.engine.inference import InferenceServer
    from mfray.engine.shard import Requests

    model = ScriptedModel(fail_when=lambda p: "bad" in p)
    server = InferenceServer(PolicyConfig(), {"stance": ("yes", "no")}, model=model)
    keys = [(0, i, 0) for i in range(len(PROMPTS))]
    scored = server.score_one(Requests(keys, PROMPTS, [0] * 4, [""] * 4))
    assert scored.errors == [None, "model error: scripted failure for 2 of 4 prompts", None,
                             "model error: scripted failure for 2 of 4 prompts"]
    assert scored.log_scores[1] is None and scored.log_scores[0].shape == (2,)
