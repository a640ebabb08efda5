"""A distilled policy: a small model fitted to the LLM policy's own option probabilities on the
simulator's own prompts, to stand in for it at a fraction of the cost (issue 42).

Where the prompt classifier (:mod:`mfray.llm.classifier`) learns the real labels, this one
learns what the LLM answers: its targets are the option distributions a run logged
(``policy.log_prompts``: every scored prompt with the model's option scores, any adapter
included), so it reproduces that policy, its reading of the mean field included.

Features: the classifier's counts of words and word pairs of the prompt, and the mean field by
value: each option's share as the ``shares`` form writes it (``comment 65%``), which a count of
words reads only as a name. Model: multinomial logistic regression fitted by L-BFGS to the
LLM's distributions (soft targets: the cross-entropy to them, i.e. their KL up to a constant),
with its L2 weight chosen by the KL on held-out prompts. One model per option set; saved as
JSON (no pickle), and read by ``policy.model=DIR`` like a classifier.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np

from mfray.llm.classifier import ClassifierModel, _log_probs, _vectorizer

DISTILLED_FILE = "distilled.json"
KIND = "mfray-distilled-policy"
L2_GRID = (1e-1, 1e-2, 1e-3, 1e-4)
MIN_DF = 2
_SHARE = re.compile(r"\b([a-z][\w-]*) (\d{1,3})%")


def shares(prompt: str, options: Sequence[str]) -> np.ndarray:
    """Each option's share in ``prompt``'s mean-field line (0 where it shows none)."""
    found = _shown(prompt.lower())
    return np.array([found.get(o, 0.0) for o in options])


def _shown(lowered: str) -> dict[str, float]:
    """Every ``name NN%`` of a lowercased text, as name -> share (a later one wins)."""
    return {name: int(pct) / 100 for name, pct in _SHARE.findall(lowered)}


@dataclass(frozen=True)
class DistilledOptionModel:
    """One option set's model: ``softmax([counts, shares] @ coef.T + intercept)``."""

    options: tuple[str, ...]
    vocabulary: dict[str, int]
    coef: np.ndarray  # (len(options), len(vocabulary) + len(options))
    intercept: np.ndarray  # (len(options),)
    l2: float

    @cached_property
    def _vectorizer(self) -> Any:
        return _vectorizer(self.vocabulary)

    @cached_property
    def _parts(self) -> PartScorer:
        return PartScorer(self)

    def features(self, prompts: Sequence[str]) -> Any:
        return _features(self._vectorizer.transform(prompts), prompts, self.options)

    def log_probs(self, prompts: Sequence[str]) -> np.ndarray:
        """The same as ``_log_probs(self.features(prompts), ...)`` (tests/test_llm_distill.py
        checks it), from the prompts' two parts, each scored once (:class:`PartScorer`)."""
        return self._parts.log_probs(prompts)

    def to_dict(self) -> dict[str, Any]:
        return {"options": list(self.options), "vocabulary": self.vocabulary,
                "coef": self.coef.tolist(), "intercept": self.intercept.tolist(), "l2": self.l2}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DistilledOptionModel:
        return cls(tuple(d["options"]), dict(d["vocabulary"]), np.asarray(d["coef"], float),
                   np.asarray(d["intercept"], float), float(d["l2"]))


def _features(counts: Any, prompts: Sequence[str], options: Sequence[str]) -> Any:
    from scipy.sparse import csr_matrix, hstack

    dense = np.stack([shares(p, options) for p in prompts]) if len(prompts) else \
        np.zeros((0, len(options)))
    return hstack([counts, csr_matrix(dense)], format="csr")


class PartScorer:
    """Scores prompts by their parts, each distinct part scored once.

    The model is linear in word and word-pair counts, and a prompt's counts are the sum of its
    parts' counts plus the word pair across each cut; its shares are read from every part, a
    later part's winning as in the whole prompt. A prompt is cut after the line end before each
    line head of the template's agent part (``The user replies …``, ``About the user:`` …),
    where no word and no ``name NN%`` can cross. So the shared part (instructions, topic, mean
    field) is read once a round for a whole simulation, a context once for its thread and a
    persona once for all who share it; the rest is a few additions. A prompt without the heads
    is one part. The answer is the model's own (tests/test_llm_distill.py)."""

    MAX_CACHED = 200_000  # parts kept (about 1 kB each); the cache starts over past it

    def __init__(self, model: DistilledOptionModel) -> None:
        from mfray.prompts import AGENT_MARKER, template

        vec = model._vectorizer
        self.lower, self.tokens = vec.build_preprocessor(), vec.build_tokenizer()
        self.vocabulary, self.options = model.vocabulary, model.options
        n_words = len(model.vocabulary)
        self.word_coef = np.ascontiguousarray(model.coef[:, :n_words].T)  # (words, options)
        self.share_coef, self.intercept = model.coef[:, n_words:], model.intercept
        lines = template("policy").split(AGENT_MARKER)[1].split("\n")
        self.heads = ["\n" + line.split("{")[0] for line in lines
                      if line[:1].isalpha() and len(line.split("{")[0]) >= 5]
        # a part's entry: its row of ``table`` (its words' logits), its first and last word,
        # the shares it shows and the row of their logits; a word pair's and shares' rows
        self.cache: dict[str, tuple[int, str | None, str | None, dict[str, float], int]] = {}
        self.pairs: dict[str, int] = {}
        self.table = np.zeros((1024, len(self.options)))  # row 0: nothing; grown by doubling
        self.n_rows = 1

    def log_probs(self, prompts: Sequence[str]) -> np.ndarray:
        from scipy.special import log_softmax

        if self.n_rows > self.MAX_CACHED:  # start over between calls, never within one
            self.cache.clear(), self.pairs.clear()
            self.n_rows = 1
        ids = [self._rows(prompt) for prompt in prompts]
        width = max(map(len, ids), default=0)
        index = np.array([r + [0] * (width - len(r)) for r in ids], dtype=np.int64)
        logits = self.intercept + self.table[index].sum(axis=1) if width else \
            np.tile(self.intercept, (len(prompts), 1))
        return log_softmax(logits, axis=1)

    def _rows(self, prompt: str) -> list[int]:
        """The rows of ``self.table`` whose sum is the prompt's logits, less the intercept."""
        out, last, shown = [], None, []
        for part in self._split(prompt):
            row, first, end, found, share_row = self._part(part)
            out.append(row)
            if last is not None and first is not None:
                out.append(self._pair(f"{last} {first}"))
            last = end if end is not None else last
            if found:
                shown.append((found, share_row))
        if len(shown) == 1:
            out.append(shown[0][1])
        elif shown:  # several parts show shares: the later ones win, as in the whole
            merged = {name: v for found, _ in shown for name, v in found.items()}
            out.append(self._add(self._share_logits(merged)))
        return out

    def _split(self, prompt: str) -> list[str]:
        cuts, at = [0], 0
        for head in self.heads:
            i = prompt.find(head, at)
            if i >= 0:
                at = i + 1  # after the line's end
                cuts.append(at)
        return [prompt[a:b] for a, b in zip(cuts, [*cuts[1:], len(prompt)], strict=True)]

    def _part(self, part: str) -> tuple[int, str | None, str | None, dict[str, float], int]:
        hit = self.cache.get(part)
        if hit is None:
            lowered = self.lower(part)
            words = self.tokens(lowered)
            grams = words + [f"{a} {b}" for a, b in pairwise(words)]
            found = _shown(lowered)
            hit = self.cache[part] = (self._add(self._weights(grams)),
                                      words[0] if words else None,
                                      words[-1] if words else None, found,
                                      self._add(self._share_logits(found)) if found else 0)
        return hit

    def _pair(self, pair: str) -> int:
        hit = self.pairs.get(pair)
        if hit is None:
            hit = self.pairs[pair] = self._add(self._weights([pair]))
        return hit

    def _add(self, row: np.ndarray) -> int:
        if self.n_rows == len(self.table):
            self.table = np.concatenate([self.table, np.zeros_like(self.table)])
        self.table[self.n_rows] = row
        self.n_rows += 1
        return self.n_rows - 1

    def _share_logits(self, found: dict[str, float]) -> np.ndarray:
        return self.share_coef @ np.array([found.get(o, 0.0) for o in self.options])

    def _weights(self, grams: Sequence[str]) -> np.ndarray:
        idx = [i for g in grams if (i := self.vocabulary.get(g)) is not None]
        return self.word_coef[idx].sum(axis=0)


def kl_rows(target: np.ndarray, log_q: np.ndarray) -> np.ndarray:
    """KL(target ‖ q) of each row (``target`` probabilities, ``log_q`` log-probabilities)."""
    p = np.clip(target, 1e-12, 1.0)
    return (target * (np.log(p) - log_q)).sum(axis=1)


def _fit(x: Any, target: np.ndarray, l2: float, start: np.ndarray | None) -> np.ndarray:
    """Weights (coef and intercept, flat) minimising the mean cross-entropy to ``target`` plus
    ``l2`` times the squared weights (the intercept unpenalised)."""
    from scipy.optimize import minimize

    n, d = x.shape
    k = target.shape[1]

    def loss(w: np.ndarray) -> tuple[float, np.ndarray]:
        coef, icpt = _unpack(w, k)
        logq = _log_probs(x, coef, icpt)
        diff = np.exp(logq) - target  # the gradient of the cross-entropy by the logits
        grad = np.concatenate([(np.asarray(x.T @ diff).T / n + 2 * l2 * coef).ravel(),
                               diff.mean(axis=0)])
        return float(-(target * logq).sum() / n + l2 * (coef ** 2).sum()), grad

    w0 = np.zeros(k * d + k) if start is None else start
    return minimize(loss, w0, jac=True, method="L-BFGS-B", options={"maxiter": 500}).x


def fit_distilled(prompts: Sequence[str], probs: np.ndarray, options: Sequence[str], *,
                  heldout: float = 0.2, seed: int = 0, l2_grid: Sequence[float] = L2_GRID
                  ) -> tuple[DistilledOptionModel, dict[str, Any]]:
    """Fit one option set's model to the LLM's distributions ``probs`` (rows summing to 1) on
    ``prompts``. A ``heldout`` share of the distinct prompts chooses the L2 weight and gives
    the report (mean KL per prompt of the LLM's distribution from the model's, and from the
    mean distribution: what a constant would get); the model is then refitted on all."""
    probs = np.asarray(probs, dtype=float)
    if probs.ndim != 2 or probs.shape != (len(prompts), len(options)) or len(prompts) < 2:
        raise ValueError("need at least two prompts, each with one probability per option")
    vec = _fit_vectorizer(prompts)
    x = _features(vec.transform(prompts), prompts, options)
    order = np.random.default_rng(seed).permutation(len(prompts))
    n_test = min(len(prompts) - 1, max(1, round(heldout * len(prompts))))
    test, train = order[:n_test], order[n_test:]
    kls, w = [], None
    for l2 in l2_grid:  # from the strongest weight down, each fit starting from the last
        w = _fit(x[train], probs[train], l2, w)
        kls.append(_kl(x[test], probs[test], w).mean())
    best = l2_grid[int(np.argmin(kls))]
    mean = probs[train].mean(axis=0)
    report = {"options": list(options), "prompts": len(prompts), "heldout_prompts": int(n_test),
              "l2": best, "heldout_kl": float(min(kls)),
              "heldout_kl_of_the_mean": float(kl_rows(probs[test],
                                                      np.log(np.clip(mean, 1e-12, 1))).mean())}
    vocab = {str(t): int(i) for t, i in vec.vocabulary_.items()}
    return DistilledOptionModel(tuple(options), vocab, *_unpack(_fit(x, probs, best, None),
                                                                len(options)), best), report


def _fit_vectorizer(prompts: Sequence[str]) -> Any:
    """The word and word-pair counts of the classifier, without the terms found in every
    prompt: the teacher's chat template (``<|im_start|>`` …, which the logged prompts carry and
    the distilled policy's own do not) and the fixed text of the template. They tell the
    prompts nothing apart, and their weights would share the intercept's, which then shifts
    where they are missing."""
    from sklearn.feature_extraction.text import CountVectorizer

    from mfray.llm.classifier import NGRAM, TOKEN_PATTERN

    n = len(prompts)
    vec = CountVectorizer(token_pattern=TOKEN_PATTERN, ngram_range=NGRAM, lowercase=True,
                          min_df=min(MIN_DF, n), max_df=n - 1 if n > MIN_DF else 1.0)
    try:
        return vec.fit(prompts)
    except ValueError:  # every term in every prompt (or in too few): keep them all
        return _vectorizer().fit(prompts)


def _unpack(w: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The flat weights of :func:`_fit` as ``coef`` (k × features) and ``intercept`` (k)."""
    return w[:-k].reshape(k, -1), w[-k:]


def _kl(x: Any, target: np.ndarray, w: np.ndarray) -> np.ndarray:
    return kl_rows(target, _log_probs(x, *_unpack(w, target.shape[1])))


class DistilledModel(ClassifierModel):
    """A :class:`mfray.llm.base.LanguageModel` that scores options with distilled option
    models (choice mode only); ``teacher`` is the model it was distilled from."""

    what, kind = "the distilled policy", KIND

    def __init__(self, models: Sequence[DistilledOptionModel], teacher: str = "",
                 model_id: str = "distilled") -> None:
        super().__init__(models, model_id)
        self.teacher = teacher

    def save(self, path: str | Path, report: Any = None, **extra: Any) -> Path:
        return super().save(path, teacher=self.teacher, report=report, **extra)


def load_distilled(path: str | Path) -> DistilledModel:
    """The distilled policy in ``path``: its ``distilled.json``, or the directory holding it
    (``mfray distill RUN --out DIR``); a :class:`~mfray.llm.base.ModelError` otherwise."""
    from mfray.llm.base import ModelError

    path = Path(path)
    path = path / DISTILLED_FILE if path.is_dir() else path
    try:
        d = json.loads(path.read_text())
        if d.get("kind") != KIND:
            raise ValueError("not a distilled policy")
        models = [DistilledOptionModel.from_dict(m) for m in d["models"]]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ModelError(f"cannot read the distilled policy {path}: {e}") from e
    return DistilledModel(models, d.get("teacher", ""),
                          model_id=f"distilled:{path.resolve().parent.name}")
