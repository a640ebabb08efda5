"""Evaluation metrics: how close a simulated population comes to the real one (``method.md`` §5).

Pure functions over numpy arrays. Labels are integer option indices in the order of the
dataset's label space, with ``-1`` for a missing label. Distributions may be given as counts or
as probabilities: every metric normalises its inputs itself.

- distribution level: :func:`kl` (the headline metric), :func:`js`, :func:`tv`, and
  :func:`kl_floor`, the KL that the real replies' own sampling leaves;
- over time: :func:`shares_per_round`, :func:`dtw`, :func:`horizon_slices`;
- individual level: :func:`f1_scores`, :func:`nll`;
- across events: :func:`bootstrap_ci`.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import ArrayLike
from scipy import stats
from scipy.spatial.distance import cdist
from scipy.special import rel_entr

from mfray.errors import DataError

#: Additive smoothing for KL and probability floor for NLL (the paper's epsilon).
EPS = 1e-6

MISSING = -1


# ---------------------------------------------------------------- input checks


def _vector(p: ArrayLike, name: str) -> np.ndarray:
    """``p`` as a float vector of finite, non-negative masses (counts or probabilities)."""
    arr = np.asarray(p, dtype=float)
    if arr.ndim != 1 or arr.size == 0:
        raise DataError(f"{name} must be a non-empty 1-D vector, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)) or np.any(arr < 0):
        raise DataError(f"{name} must hold finite, non-negative values, got {arr.tolist()}")
    return arr


def _normalised(p: ArrayLike, name: str) -> np.ndarray:
    arr = _vector(p, name)
    total = arr.sum()
    if total <= 0:
        raise DataError(f"{name} has no mass (all zeros): it is no distribution")
    return arr / total


def _pair(p: ArrayLike, q: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    a, b = _normalised(p, "p"), _normalised(q, "q")
    if a.shape != b.shape:
        raise DataError(f"distributions differ in length: {a.size} vs {b.size} options")
    return a, b


def _labels(labels: ArrayLike, n_classes: int, name: str, *, allow_missing: bool) -> np.ndarray:
    """Integer label indices in ``[0, n_classes)``, plus ``-1`` where ``allow_missing``."""
    if n_classes < 1:
        raise DataError(f"n_classes must be >= 1, got {n_classes}")
    arr = np.asarray(labels)
    if arr.ndim != 1:
        raise DataError(f"{name} must be a 1-D array of label indices, got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise DataError(f"{name} must hold integer label indices, got dtype {arr.dtype}")
    arr = arr.astype(np.int64)
    low = MISSING if allow_missing else 0
    bad = (arr < low) | (arr >= n_classes)
    if np.any(bad):
        raise DataError(
            f"{name} holds {arr[bad][0]}, outside [{low}, {n_classes}) "
            f"({int(bad.sum())} such value(s))"
        )
    return arr


# ---------------------------------------------------------------- distributions


def smooth(p: ArrayLike, eps: float = EPS) -> np.ndarray:
    """Add ``eps`` to every entry of a count or probability vector, then normalise to sum 1.

    Why: KL(real‖sim) is infinite when the simulation never produces a label that reality does;
    the paper smooths both sides with ``eps = 1e-6`` so such a miss costs a large finite amount.
    """
    if eps < 0:
        raise DataError(f"eps must be >= 0, got {eps}")
    arr = _vector(p, "p") + eps
    total = arr.sum()
    if total <= 0:
        raise DataError("p has no mass (all zeros) and eps is 0: nothing to normalise")
    return arr / total


def counts(labels: ArrayLike, n_classes: int) -> np.ndarray:
    """Number of agents per option (length ``n_classes``, int64); missing labels (-1) are skipped."""
    arr = _labels(labels, n_classes, "labels", allow_missing=True)
    return np.bincount(arr[arr != MISSING], minlength=n_classes).astype(np.int64)


def distribution_from_probs(probs: ArrayLike) -> np.ndarray:
    """Expected distribution from the agents' action probabilities (N×K), summing to 1.

    Each row is renormalised first so that every agent weighs exactly one, whatever rounding its
    probabilities carry. A row that is entirely NaN is a missing agent (a failed decision) and is
    skipped, as a ``-1`` label is; any other non-finite or negative value is an error.
    """
    arr = np.asarray(probs, dtype=float)
    if arr.ndim != 2 or arr.shape[1] == 0:
        raise DataError(f"probs must be an N×K matrix with K >= 1, got shape {arr.shape}")
    arr = arr[~np.all(np.isnan(arr), axis=1)]
    if arr.shape[0] == 0:
        raise DataError("no agent with probabilities: the distribution is undefined")
    if not np.all(np.isfinite(arr)) or np.any(arr < 0):
        raise DataError("probs must hold finite, non-negative values (or whole NaN rows)")
    row_sums = arr.sum(axis=1, keepdims=True)
    if np.any(row_sums <= 0):
        raise DataError(f"{int((row_sums <= 0).sum())} probability row(s) sum to zero")
    total = (arr / row_sums).sum(axis=0)
    return total / total.sum()


# ---------------------------------------------------------------- divergences


def kl(p_real: ArrayLike, p_sim: ArrayLike, eps: float = EPS) -> float:
    """KL(real‖sim) in nats, after smoothing both sides with ``eps`` (see :func:`smooth`)."""
    a, b = smooth(p_real, eps), smooth(p_sim, eps)
    if a.shape != b.shape:
        raise DataError(f"distributions differ in length: {a.size} vs {b.size} options")
    # rel_entr is exactly 0 where a == b, so identical inputs give exactly 0.
    return float(max(rel_entr(a, b).sum(), 0.0))


def kl_floor(real_counts: ArrayLike, n_draws: int = 4000, seed: int = 0,
             eps: float = EPS) -> float:
    """The sampling floor of :func:`kl` for an event with these real label counts: the mean
    KL(p̂‖p) of ``n`` labels drawn from ``p``, where ``p`` is the counts' own mix and ``n`` their
    total (a seeded Monte Carlo over ``n_draws`` samples, smoothed as :func:`kl` smooths).

    Why: the real replies are a finite sample of what the event's population does. A simulator
    that knew the population's mix exactly would still score about this KL on average (about
    ``(K − 1) / 2n`` for large ``n``, ``K`` the options present), so a variant's KL near it has
    nothing left to explain; on an event of 40 replies it is most of any variant's KL. ``p`` is
    the observed mix (a plug-in estimate), not the unknown true one.
    """
    c = _vector(real_counts, "real_counts")
    if c.sum() <= 0:
        raise DataError("real_counts holds no label: the floor is undefined")
    if not np.allclose(c, np.round(c)):
        raise DataError(f"real_counts must be whole counts of replies, got {c.tolist()}")
    n = round(float(c.sum()))
    p = c / c.sum()
    draws = np.random.default_rng(seed).multinomial(n, p, size=n_draws) + eps
    a = draws / draws.sum(axis=1, keepdims=True)
    return float(np.maximum(rel_entr(a, smooth(p, eps)).sum(axis=1), 0.0).mean())


def js(p: ArrayLike, q: ArrayLike) -> float:
    """Jensen–Shannon divergence in bits (base 2), in ``[0, 1]``; no smoothing is needed.

    This is ``scipy.spatial.distance.jensenshannon(p, q, base=2) ** 2``, computed from the same
    ``rel_entr`` terms: scipy takes a square root of a sum that can round to ``-1e-17`` for near
    identical inputs and then returns NaN, so the sum is clipped to ``[0, 1]`` here instead.
    """
    a, b = _pair(p, q)
    m = 0.5 * (a + b)
    value = 0.5 * (rel_entr(a, m).sum() + rel_entr(b, m).sum()) / math.log(2)
    return float(np.clip(value, 0.0, 1.0))


def tv(p: ArrayLike, q: ArrayLike) -> float:
    """Total variation distance ``0.5 · Σ|p − q|`` of the normalised vectors, in ``[0, 1]``.

    For nominal labels it equals the Wasserstein-1 distance under the 0/1 ground metric.
    """
    a, b = _pair(p, q)
    return float(np.clip(0.5 * np.abs(a - b).sum(), 0.0, 1.0))


# ---------------------------------------------------------------- over time


def shares_per_round(
    label_idx: ArrayLike, round_idx: ArrayLike, n_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per-round label proportions.

    Returns ``(rounds, shares)``: ``rounds`` are the sorted round ids that hold at least one
    labelled agent (a round whose agents all miss their label has no proportions and is left
    out), ``shares`` is ``len(rounds) × n_classes`` with rows summing to 1.
    """
    labels = _labels(label_idx, n_classes, "label_idx", allow_missing=True)
    rnd = np.asarray(round_idx)
    if rnd.shape != labels.shape:
        raise DataError(f"label_idx and round_idx differ in shape: {labels.shape} vs {rnd.shape}")
    keep = labels != MISSING
    rounds, row = np.unique(rnd[keep], return_inverse=True)
    table = np.zeros((rounds.size, n_classes), dtype=float)
    np.add.at(table, (row, labels[keep]), 1.0)
    if rounds.size:
        table /= table.sum(axis=1, keepdims=True)
    return rounds, table


def _curve(curve: ArrayLike, name: str) -> np.ndarray:
    arr = np.asarray(curve, dtype=float)
    if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise DataError(f"{name} must be a non-empty T×K matrix of shares, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)) or np.any(arr < 0):
        raise DataError(f"{name} must hold finite, non-negative shares")
    sums = arr.sum(axis=1, keepdims=True)
    if np.any(sums <= 0):
        raise DataError(f"{name} has {int((sums <= 0).sum())} round(s) without any mass")
    return arr / sums


def dtw(real_curve: ArrayLike, sim_curve: ArrayLike) -> float:
    """Dynamic time warping distance between two per-round proportion curves, in ``[0, 1]``.

    ``real_curve`` is T×K and ``sim_curve`` T'×K (rows are shares and are renormalised). The
    step cost of matching real round ``i`` with simulated round ``j`` is the total variation
    between their rows; the classic DP (steps: diagonal, down, right; both ends anchored) finds
    the warping path of least total cost. The result is that total divided by the number of
    matched pairs on the path, i.e. the mean step cost, so it stays in ``[0, 1]`` and does not
    grow with the number of rounds. Among paths of equal cost the shortest is taken, which makes
    the value well defined and symmetric in its two arguments.
    """
    a, b = _curve(real_curve, "real_curve"), _curve(sim_curve, "sim_curve")
    if a.shape[1] != b.shape[1]:
        raise DataError(f"curves differ in option count: {a.shape[1]} vs {b.shape[1]}")
    step = (0.5 * cdist(a, b, metric="cityblock")).tolist()
    n, m = len(step), len(step[0])
    inf = (math.inf, 0)
    # (cost, path length) of the best path to each cell; row -1 / column -1 is the padding.
    prev: list[tuple[float, int]] = [(0.0, 0)] + [inf] * m
    for i in range(n):
        cur: list[tuple[float, int]] = [inf] * (m + 1)
        for j in range(m):
            # Tuples compare cost first, then path length: the cheapest, then the shortest.
            cost, length = min(prev[j], prev[j + 1], cur[j])
            cur[j + 1] = (cost + step[i][j], length + 1)
        prev = cur
    total, length = prev[m]
    return float(min(max(total / length, 0.0), 1.0))


def horizon_slices(n_rounds: int) -> dict[str, slice]:
    """Split ``n_rounds`` rollout rounds into "short", "mid" and "long" horizons (thirds).

    The slices index the rollout rounds (0 = the first round after warm-up), are contiguous,
    do not overlap and together cover ``range(n_rounds)``. When ``n_rounds`` is not a multiple
    of 3 the earlier horizons get the extra rounds (as ``numpy.array_split``): 4 → 2/1/1,
    5 → 2/2/1. With fewer than 3 rounds the later horizons are empty: 2 → 1/1/0, 1 → 1/0/0,
    0 → all empty.
    """
    if n_rounds < 0:
        raise DataError(f"n_rounds must be >= 0, got {n_rounds}")
    base, extra = divmod(n_rounds, 3)
    sizes = [base + (k < extra) for k in range(3)]
    bounds = np.cumsum([0, *sizes]).tolist()
    names = ("short", "mid", "long")
    return {name: slice(bounds[k], bounds[k + 1]) for k, name in enumerate(names)}


# ---------------------------------------------------------------- individual level


def f1_scores(y_true: ArrayLike, y_pred: ArrayLike, n_classes: int) -> tuple[float, float]:
    """Micro and macro F1 of the simulated labels ``y_pred`` against the real ones ``y_true``.

    Pairs whose real label is missing (-1) are ignored. A missing simulated label (-1) against a
    real one counts as a miss (a false negative of the real class, no false positive). Macro F1
    averages the per-class F1 ``2TP / (2TP + FP + FN)`` over the classes present in ``y_true`` or
    ``y_pred`` after that filtering (sklearn's default ``labels``); classes absent from both are
    left out. Both are NaN when no pair remains.
    """
    t = _labels(y_true, n_classes, "y_true", allow_missing=True)
    p = _labels(y_pred, n_classes, "y_pred", allow_missing=True)
    if t.shape != p.shape:
        raise DataError(f"y_true and y_pred differ in length: {t.size} vs {p.size}")
    keep = t != MISSING
    t, p = t[keep], p[keep]
    if t.size == 0:
        return math.nan, math.nan
    hit = t == p
    tp = np.bincount(t[hit], minlength=n_classes)
    fn = np.bincount(t[~hit], minlength=n_classes)
    predicted = p[~hit]
    fp = np.bincount(predicted[predicted != MISSING], minlength=n_classes)
    micro = 2 * tp.sum() / (2 * tp.sum() + fp.sum() + fn.sum())
    denom = 2 * tp + fp + fn
    present = denom > 0
    macro = float(np.mean(2 * tp[present] / denom[present]))
    return float(micro), macro


def nll(probs: ArrayLike, y_true: ArrayLike) -> float:
    """Mean negative log-likelihood (nats) of the real labels under the agents' probabilities.

    ``probs`` is N×K, ``y_true`` N label indices; rows with a missing label (-1) are ignored, and
    probabilities are clipped at :data:`EPS` so one impossible label costs ``-log(EPS)`` instead
    of infinity. NaN when no label is present.
    """
    arr = np.asarray(probs, dtype=float)
    if arr.ndim != 2 or arr.shape[1] == 0:
        raise DataError(f"probs must be an N×K matrix with K >= 1, got shape {arr.shape}")
    t = _labels(y_true, arr.shape[1], "y_true", allow_missing=True)
    if t.size != arr.shape[0]:
        raise DataError(f"probs has {arr.shape[0]} rows but y_true {t.size} labels")
    keep = t != MISSING
    if not np.any(keep):
        return math.nan
    picked = arr[keep, t[keep]]
    if not np.all(np.isfinite(picked)) or np.any(picked < 0):
        raise DataError("probs must hold finite, non-negative probabilities for labelled rows")
    return float(np.mean(-np.log(np.clip(picked, EPS, 1.0))))


# ---------------------------------------------------------------- across events


def bootstrap_ci(
    values: ArrayLike, level: float = 0.95, n_resamples: int = 2000, seed: int = 0
) -> tuple[float, float, float]:
    """Mean of per-event values and its percentile-bootstrap interval: ``(mean, low, high)``.

    NaNs (events where a metric is undefined) are dropped first. One value gives ``(v, v, v)``,
    none gives three NaNs. Uses ``scipy.stats.bootstrap`` (percentile method, which stays finite
    for constant input where BCa does not); the same seed gives the same interval.
    """
    if not 0 < level < 1:
        raise DataError(f"level must lie in (0, 1), got {level}")
    if n_resamples < 1:
        raise DataError(f"n_resamples must be >= 1, got {n_resamples}")
    arr = np.asarray(values, dtype=float).ravel()
    arr = arr[~np.isnan(arr)]
    if arr.size == 0:
        return math.nan, math.nan, math.nan
    mean = float(arr.mean())
    if arr.size == 1:
        return mean, mean, mean
    res = stats.bootstrap(
        (arr,),
        np.mean,
        confidence_level=level,
        n_resamples=n_resamples,
        method="percentile",
        rng=np.random.default_rng(seed),
    )
    return mean, float(res.confidence_interval.low), float(res.confidence_interval.high)
