"""The model interface every backend implements, its errors, and a scripted model for tests.

``score`` is choice mode: the log-probability of each option as the continuation of each prompt,
normalised over the options. Options are the *exact* continuation text (pass ``" yes"`` after a
prompt ending in ``"Answer:"``; don't end prompts with a space, BPE tokenisers split it badly).
The prompt is tokenised with the tokenizer's special tokens (no second BOS when the prompt text
already starts with it), each option on its own without special tokens, and the two id lists
are concatenated. After a chat prompt (ending in the assistant header and a newline) pass the
options without the leading space. How a backend computes it: :mod:`mfray.llm.hf`.

``generate`` writes one continuation per prompt, each drawn from its own seed (``seeds``), so
that batching does not decide a prompt's text; greedy when the temperature is 0.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

from mfray.errors import MfrayError


class ModelError(MfrayError):
    """A model call or load that failed; the engine records it as ``ok = false`` decisions.

    ``indices`` names the prompts of the call at fault when the model knows them.
    """

    def __init__(self, message: str, *, indices: Sequence[int] | None = None) -> None:
        super().__init__(message)
        self.indices = tuple(indices) if indices is not None else None


@runtime_checkable
class LanguageModel(Protocol):
    """What the policy and the mean-field roles need from a model: two methods."""

    model_id: str

    def score(self, prompts: Sequence[str], options: Sequence[str]) -> np.ndarray:
        """Log-probabilities, shape (len(prompts), len(options)), each row log-normalised."""
        ...

    def generate(self, prompts: Sequence[str], *, max_new_tokens: int = 64,
                 temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0,
                 repetition_penalty: float = 1.0,
                 seeds: Sequence[int] | None = None) -> list[str]:
        """One continuation per prompt, seeded per prompt; greedy when temperature == 0."""
        ...

    def close(self) -> None:
        """Release the model's memory."""
        ...


def model_input(model: Any, prompt: str) -> str:
    """A rendered template as the model reads it: the tokenizer's chat template with the
    system message where the model has one, the raw prompt otherwise. The one rule for
    simulation (``InferenceServer.format``) and training."""
    from mfray.prompts import system_prompt

    if getattr(getattr(model, "tokenizer", None), "chat_template", None):
        return model.chat_prompt(system_prompt(), prompt)
    return prompt


def check_options(options: Sequence[str]) -> None:
    """Reject option lists that can't be scored (empty, repeated or empty strings)."""
    if not options or any(not o for o in options) or len(set(options)) != len(options):
        raise ValueError(f"options must be distinct non-empty strings, got {list(options)!r}")


def check_sampling(n_prompts: int, *, max_new_tokens: int, temperature: float, top_p: float,
                   top_k: int, repetition_penalty: float, seeds: Sequence[int] | None) -> list[int]:
    """Validate generation arguments; return one seed per prompt (0s when greedy, unseeded)."""
    if max_new_tokens < 0 or temperature < 0 or not 0 < top_p <= 1 or top_k < 0 \
            or repetition_penalty <= 0:
        raise ValueError("need max_new_tokens >= 0, temperature >= 0, 0 < top_p <= 1, "
                         "top_k >= 0, repetition_penalty > 0")
    if seeds is None:
        if temperature > 0:
            raise ValueError("seeds are required when sampling (temperature > 0)")
        return [0] * n_prompts
    if len(seeds) != n_prompts:
        raise ValueError(f"{len(seeds)} seeds for {n_prompts} prompts")
    return [int(s) for s in seeds]


def _digest(*parts: str) -> int:
    """A stable 64-bit hash (Python's hash() changes between processes)."""
    h = hashlib.blake2b("\x1f".join(parts).encode(), digest_size=8)
    return int.from_bytes(h.digest(), "little")


def _hash_distribution(prompt: str, options: Sequence[str]) -> np.ndarray:
    """A flat-Dirichlet draw from a hash of prompt and options: normalised exponentials of
    hash-derived uniforms (a microsecond, where a seeded Generator costs tens)."""
    digest = hashlib.blake2b("\x1f".join((prompt, *options)).encode(),
                             digest_size=8 * len(options)).digest()
    u = ((np.frombuffer(digest, dtype="<u8") >> np.uint64(11)).astype(float) + 0.5) / 2.0**53
    e = -np.log(u)
    return e / e.sum()


def _hash_text(prompt: str, seed: int) -> str:
    return f"scripted reply {_digest(prompt, str(seed)):016x}"


class ScriptedModel:
    """A deterministic model for tests: probabilities and texts come from plain functions.

    ``fn(prompt, options)`` gives probabilities (normalised here; default: a Dirichlet draw seeded
    by a hash of prompt and options). ``text_fn(prompt, seed)`` gives the text (default: a hash;
    greedy calls pass seed 0). A call raises ``ModelError`` when one of its prompts matches
    ``fail_when`` or, with ``fail_every = n``, when a prompt's stable hash is divisible by n, so
    failures depend on the prompt only, never on batching.
    """

    def __init__(self, fn: Callable[[str, Sequence[str]], Any] | None = None,
                 text_fn: Callable[[str, int], str] | None = None, *,
                 fail_when: Callable[[str], bool] | None = None, fail_every: int | None = None,
                 model_id: str = "scripted") -> None:
        if fail_every is not None and fail_every < 1:
            raise ValueError(f"fail_every must be >= 1, got {fail_every}")
        self.fn = fn or _hash_distribution
        self.text_fn = text_fn or _hash_text
        self.fail_when, self.fail_every, self.model_id = fail_when, fail_every, model_id
        self.calls = 0  # how many score/generate calls were made (for batching tests)

    def _check_failures(self, prompts: Sequence[str]) -> None:
        self.calls += 1
        bad = [i for i, p in enumerate(prompts)
               if (self.fail_when is not None and self.fail_when(p))
               or (self.fail_every is not None and _digest(p) % self.fail_every == 0)]
        if bad:
            raise ModelError(f"scripted failure for {len(bad)} of {len(prompts)} prompts",
                             indices=bad)

    def score(self, prompts: Sequence[str], options: Sequence[str]) -> np.ndarray:
        """Log of ``fn``'s normalised probabilities, shape (len(prompts), len(options))."""
        check_options(options)
        self._check_failures(prompts)
        rows = [np.asarray(self.fn(p, options), dtype=float) for p in prompts]
        for i, probs in enumerate(rows):
            if probs.shape != (len(options),):
                raise ModelError(f"scripted fn gave invalid probabilities {probs!r}", indices=[i])
        probs = np.array(rows).reshape(len(prompts), len(options))
        sums = probs.sum(axis=1, keepdims=True)
        bad = ~(np.isfinite(probs).all(axis=1) & (probs >= 0).all(axis=1) & (sums[:, 0] > 0))
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ModelError(f"scripted fn gave invalid probabilities {rows[i]!r}", indices=[i])
        with np.errstate(divide="ignore"):  # a zero probability is a legitimate -inf
            return np.log(probs / sums)

    def generate(self, prompts: Sequence[str], *, max_new_tokens: int = 64,
                 temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0,
                 repetition_penalty: float = 1.0,
                 seeds: Sequence[int] | None = None) -> list[str]:
        """``text_fn(prompt, seed)`` per prompt (seed 0 when greedy); sampling knobs are checked
        but otherwise ignored."""
        seeds = check_sampling(len(prompts), max_new_tokens=max_new_tokens,
                               temperature=temperature, top_p=top_p, top_k=top_k,
                               repetition_penalty=repetition_penalty, seeds=seeds)
        self._check_failures(prompts)
        return [self.text_fn(p, s if temperature > 0 else 0) for p, s in zip(prompts, seeds,
                                                                                strict=True)]

    def close(self) -> None:
        """Nothing to release."""
