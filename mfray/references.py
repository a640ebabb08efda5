"""Statistical references that need no LLM (method.md §3): ``base-rate`` and ``persistence``.

Both give every rollout agent of an event the same label distribution. They cost nothing and are
hard to beat on distribution-level metrics, so every comparison shows them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.special import rel_entr

SMOOTH = 1e-6
WEIGHT_GRID = np.linspace(0.0, 1.0, 21)


def _dist(counts: np.ndarray) -> np.ndarray:
    c = np.asarray(counts, dtype=float) + SMOOTH
    return c / c.sum()


def label_counts(labels: np.ndarray, n_options: int) -> np.ndarray:
    """Counts of label indices, ignoring missing labels (-1)."""
    labels = np.asarray(labels, dtype=int)
    return np.bincount(labels[labels >= 0], minlength=n_options)


def base_rate(train_events: Sequence[np.ndarray], n_options: int) -> np.ndarray:
    """The pooled label distribution of the training events' replies."""
    total = sum((label_counts(e, n_options) for e in train_events), np.zeros(n_options))
    return _dist(total)


def persistence(warmup_labels: np.ndarray, base: np.ndarray, weight: float) -> np.ndarray:
    """The warm-up agents' label distribution blended with the base rate:
    ``weight · warm-up + (1 − weight) · base``. With no labelled warm-up agent: the base rate."""
    counts = label_counts(warmup_labels, len(base))
    if counts.sum() == 0:
        return np.asarray(base, dtype=float)
    return weight * _dist(counts) + (1.0 - weight) * np.asarray(base)


def fit_persistence_weight(train_events: Sequence[np.ndarray], warmup: int,
                           n_options: int) -> float:
    """The blend weight minimising the mean KL(real rollout ‖ prediction) over training events.

    Each training event is predicted from its own first ``warmup`` agents and the base rate of the
    *other* training events, as an unseen event would be. Events without a rollout are skipped;
    with none left, the weight is 0.5.
    """
    usable = [i for i, e in enumerate(train_events) if len(e) > warmup]
    if not usable:
        return 0.5
    losses = np.zeros(len(WEIGHT_GRID))
    for i in usable:
        others = [e for j, e in enumerate(train_events) if j != i]
        base = base_rate(others, n_options) if others else np.full(n_options, 1.0 / n_options)
        real = _dist(label_counts(train_events[i][warmup:], n_options))
        for g, w in enumerate(WEIGHT_GRID):
            pred = persistence(train_events[i][:warmup], base, float(w))
            losses[g] += rel_entr(real, _dist(pred)).sum()
    return float(WEIGHT_GRID[int(np.argmin(losses))])
