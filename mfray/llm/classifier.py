"""A prompt classifier: the policy's prompts read by a bag-of-words logistic regression.

``mfray train classifier`` fits it on the same examples ``mfray train policy`` tunes an LLM on
(byte-identical prompts, the same held-out events), and ``--set policy.model=RUN`` simulates
with it in the LLM's place. It answers what a linear model of the words of the same prompts
gets, in the same closed loop: the words of the reply's context and the persona, and the
mean field, whose tally form (``sim.meanfield_form=tally``) is a count of words, which such a
model reads by value. An LLM variant that does no better than it has learnt nothing a word
count does not know.

Features: counts of words and word pairs seen in at least ``min_df`` training prompts
(scikit-learn's ``CountVectorizer``); the model: multinomial logistic regression whose
L2 weight is chosen by log-loss in cross-validation that holds out whole training events
(``GroupKFold``), so the choice rewards what carries to unseen events. One model per option
set (label dimension). Saved as JSON (vocabulary, weights): no pickle.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
from scipy.special import log_softmax

from mfray.llm.base import ModelError

CLASSIFIER_FILE = "classifier.json"
C_GRID = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 0.1, 1.0)
MAX_ITER = 1000
TOKEN_PATTERN = r"(?u)\b\w+\b|\?|%"  # words, digits, question marks and percent signs
NGRAM = (1, 2)
MIN_DF = 3


@dataclass(frozen=True)
class OptionModel:
    """The logistic regression of one option set: ``softmax(x @ coef.T + intercept)``."""

    options: tuple[str, ...]
    vocabulary: dict[str, int]
    coef: np.ndarray  # (len(options), len(vocabulary))
    intercept: np.ndarray  # (len(options),)
    c: float  # the L2 weight chosen (scikit-learn's C: larger fits closer)

    @cached_property
    def _vectorizer(self) -> Any:  # built once per model, not per scoring call
        return _vectorizer(self.vocabulary)

    def log_probs(self, prompts: Sequence[str]) -> np.ndarray:
        return _log_probs(self._vectorizer.transform(prompts), self.coef, self.intercept)

    def to_dict(self) -> dict[str, Any]:
        return {"options": list(self.options), "vocabulary": self.vocabulary,
                "coef": self.coef.tolist(), "intercept": self.intercept.tolist(), "c": self.c}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> OptionModel:
        return cls(tuple(d["options"]), dict(d["vocabulary"]), np.asarray(d["coef"], float),
                   np.asarray(d["intercept"], float), float(d["c"]))


def _log_probs(x: Any, coef: np.ndarray, intercept: np.ndarray) -> np.ndarray:
    """Rows of option log-probabilities of the feature rows ``x``."""
    return log_softmax(np.asarray(x @ coef.T + intercept), axis=1)


def _vectorizer(vocabulary: dict[str, int] | None = None, min_df: int = 1) -> Any:
    from sklearn.feature_extraction.text import CountVectorizer

    return CountVectorizer(token_pattern=TOKEN_PATTERN, ngram_range=NGRAM, lowercase=True,
                           min_df=min_df, vocabulary=vocabulary)


def fit_option_model(prompts: Sequence[str], labels: Sequence[int], options: Sequence[str],
                     groups: Sequence[str], *, min_df: int = MIN_DF,
                     c_grid: Sequence[float] = C_GRID, progress: bool = False) -> OptionModel:
    """Fit one option set's model on ``prompts`` labelled ``labels`` (indices into
    ``options``); ``groups`` (the examples' events) are held out together in the choice of the
    L2 weight, with up to 5 folds (with one event: the largest weight of the grid);
    ``progress``: a bar over the cross-validation's folds."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GroupKFold
    from tqdm import tqdm

    y = np.asarray(labels, dtype=int)
    if len(prompts) != len(y) or len(y) != len(groups):
        raise ValueError("need one label and one group per prompt")
    if len(y) == 0 or y.min() < 0 or y.max() >= len(options):
        raise ValueError(f"labels must index the {len(options)} options")
    vec = _vectorizer(min_df=min_df)
    try:
        x = vec.fit_transform(prompts)
    except ValueError:  # a set so small that no word is in min_df prompts: keep every word
        vec = _vectorizer(min_df=1)
        x = vec.fit_transform(prompts)
    n_groups = len(set(groups))

    def fitted(m: Any, rows: Any) -> tuple[np.ndarray, np.ndarray]:
        # classes missing from the rows get (almost) no mass
        coef, icpt = np.zeros((len(options), x.shape[1])), np.full(len(options), -30.0)
        classes = np.unique(y[rows])
        if len(classes) == 1:  # scikit-learn fits no model of a single class
            icpt[classes[0]] = 0.0
            return coef, icpt
        m.fit(x[rows], y[rows])
        # with two classes scikit-learn keeps one row of weights, for the second class
        w = m.coef_ if len(classes) > 2 else np.vstack([-m.coef_, m.coef_]) / 2
        b = m.intercept_ if len(classes) > 2 else np.r_[-m.intercept_, m.intercept_] / 2
        coef[m.classes_], icpt[m.classes_] = w, b
        return coef, icpt

    grid = sorted(c_grid)
    best = grid[-1]
    if n_groups > 1:
        losses = np.zeros(len(grid))
        folds = list(GroupKFold(n_splits=min(5, n_groups)).split(x, y, groups))
        for tr, te in tqdm(folds, desc=f"choosing the L2 weight ({len(grid)} values)",
                           unit="fold", disable=not progress):
            m = LogisticRegression(max_iter=MAX_ITER, warm_start=True)  # along the grid
            for k, c in enumerate(grid):
                lp = _log_probs(x[te], *fitted(m.set_params(C=c), tr))
                losses[k] -= lp[np.arange(len(te)), y[te]].sum() / len(y)
        best = grid[int(np.argmin(losses))]
    coef, icpt = fitted(LogisticRegression(C=best, max_iter=MAX_ITER), np.arange(len(y)))
    vocab = {str(k): int(v) for k, v in vec.vocabulary_.items()}
    return OptionModel(tuple(options), vocab, coef, icpt, float(best))


class ClassifierModel:
    """A :class:`mfray.llm.base.LanguageModel` that scores options with fitted option models. It
    writes no text: choice mode only."""

    what, kind = "the classifier", "mfray-prompt-classifier"  # in messages; in the file

    def __init__(self, models: Sequence[Any], model_id: str = "classifier") -> None:
        self.models = {m.options: m for m in models}
        self.model_id = model_id

    def score(self, prompts: Sequence[str], options: Sequence[str]) -> np.ndarray:
        model = self.models.get(tuple(options))
        if model is None:
            raise ModelError(f"{self.what} was fitted on the options "
                             f"{[list(o) for o in self.models]}, not {list(options)}")
        return model.log_probs(prompts)

    def generate(self, prompts: Sequence[str], **_: Any) -> list[str]:
        raise ModelError(f"{self.what} writes no text: use policy.mode=choice")

    def close(self) -> None:
        pass

    def save(self, path: str | Path, **extra: Any) -> Path:
        path = Path(path)
        path.write_text(json.dumps({"kind": self.kind, **extra,
                                    "models": [m.to_dict() for m in self.models.values()]}))
        return path


def classifier_path(model: str | None, name: str = CLASSIFIER_FILE) -> Path | None:
    """The file ``name`` that ``policy.model`` names (the file, or the directory of a ``mfray
    train classifier`` run, or of a ``mfray distill``), or None when it names something
    else."""
    if not model:
        return None
    p = Path(model).expanduser()
    for cand in (p, p / name):
        if cand.name == name and cand.is_file():
            return cand
    return None


def load_classifier(path: str | Path) -> ClassifierModel:
    path = Path(path)
    try:
        d = json.loads(path.read_text())
        if d.get("kind") != "mfray-prompt-classifier":
            raise ValueError("not a prompt classifier")
        models = [OptionModel.from_dict(m) for m in d["models"]]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ModelError(f"cannot read the classifier {path}: {e}") from e
    return ClassifierModel(models, model_id=f"classifier:{path.resolve().parent.name}")
