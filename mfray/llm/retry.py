"""Retries as a model: :class:`RetryingModel` wraps a model and, when a call fails for prompts the
model names, answers the others with one more call.

A failure stays data: the wrapper never fills in an answer. When some prompts fail it raises
:class:`PartialAnswer`, which names them (``indices``, as any :class:`ModelError`) and carries
the answers of the rest; :func:`answers` turns any call's outcome into ``(answers, errors)``,
the form the inference actor records as ``ok = false`` decisions.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from mfray.llm.base import LanguageModel, ModelError


class PartialAnswer(ModelError):
    """Some prompts of a call failed (``indices``); ``answers`` holds the others' answers, in
    prompt order, None where failed."""

    def __init__(self, message: str, *, indices: Sequence[int], answers: list[Any]) -> None:
        super().__init__(message, indices=indices)
        self.answers = answers


class RetryingModel:
    """A :class:`~mfray.llm.base.LanguageModel` that calls ``model`` with one bounded retry:
    when a call's :class:`ModelError` names the prompts at fault, the other prompts are
    called again, once. Outcomes of a call of ``n`` prompts:

    - all answered: the answers, as ``model`` gives them;
    - the failed prompts named and the rest answered again: :class:`PartialAnswer` with the
      first error's text;
    - the failure names no prompt, or the retry fails too: that error, for every prompt.

    An answer of the wrong length fails the whole call (it would shift rows), never some of it.
    """

    def __init__(self, model: LanguageModel) -> None:
        self.model = model
        self.model_id = model.model_id

    def score(self, prompts: Sequence[str], options: Sequence[str]) -> Any:
        """The model's option log-probabilities, with one retry (class docstring)."""
        return self._spare(lambda idx: self.model.score([prompts[k] for k in idx], options),
                           len(prompts))

    def generate(self, prompts: Sequence[str], *, max_new_tokens: int = 64,
                 temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0,
                 repetition_penalty: float = 1.0,
                 seeds: Sequence[int] | None = None) -> list[str]:
        """The model's continuations, with one retry (class docstring); each retried prompt
        keeps its own seed."""
        def call(idx: list[int]) -> list[str]:
            return self.model.generate(
                [prompts[k] for k in idx], max_new_tokens=max_new_tokens,
                temperature=temperature, top_p=top_p, top_k=top_k,
                repetition_penalty=repetition_penalty,
                seeds=None if seeds is None else [seeds[k] for k in idx])

        return list(self._spare(call, len(prompts)))

    def close(self) -> None:
        """Release the wrapped model."""
        self.model.close()

    @staticmethod
    def _spare(call: Callable[[list[int]], Sequence[Any]], n: int) -> Any:
        everything = list(range(n))
        try:
            return _checked(call, everything)
        except ModelError as exc:
            if not exc.indices:
                raise
            first, bad = exc, set(exc.indices)
        rest = [k for k in everything if k not in bad]
        try:
            got = _checked(call, rest) if rest else []
        except ModelError as again:  # every prompt fails, with the second error
            raise ModelError(str(again)) from again
        out: list[Any] = [None] * n
        for k, value in zip(rest, got, strict=True):
            out[k] = value
        raise PartialAnswer(str(first), indices=sorted(bad), answers=out) from first


def _checked(call: Callable[[list[int]], Sequence[Any]], idx: list[int]) -> Sequence[Any]:
    got = call(idx)
    if len(got) != len(idx):  # a malformed answer fails the whole call, never shifts rows
        raise ModelError(f"the model answered {len(got)} of {len(idx)} prompts")
    return got


def answers(call: Callable[[], Sequence[Any]], n: int) -> tuple[list[Any], dict[int, str]]:
    """A call of ``n`` prompts as data: the answers (None where failed) and the error text of
    each failed prompt (``model error: ...``)."""
    try:
        got = call()
    except PartialAnswer as exc:
        return list(exc.answers), dict.fromkeys(exc.indices or (), f"model error: {exc}")
    except ModelError as exc:
        return [None] * n, dict.fromkeys(range(n), f"model error: {exc}")
    return list(got), {}
