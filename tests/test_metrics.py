"""Tests of mfray.evaluate.metrics: hand-computed values and properties over random inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.spatial.distance import jensenshannon

from mfray.errors import DataError
from mfray.evaluate import metrics as M

# ---------------------------------------------------------------- strategies


@st.composite
def distributions(draw: st.DrawFn, k: int | None = None) -> np.ndarray:
    """A non-negative vector with some mass (counts-like or probability-like)."""
    k = draw(st.integers(1, 6)) if k is None else k
    values = draw(st.lists(st.floats(0, 100), min_size=k, max_size=k))
    arr = np.array(values)
    if arr.sum() <= 0:
        arr[draw(st.integers(0, k - 1))] = 1.0
    return arr


@st.composite
def distribution_pairs(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray]:
    k = draw(st.integers(1, 6))
    return draw(distributions(k)), draw(distributions(k))


@st.composite
def curve_pairs(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray]:
    k = draw(st.integers(1, 4))
    a = [draw(distributions(k)) for _ in range(draw(st.integers(1, 8)))]
    b = [draw(distributions(k)) for _ in range(draw(st.integers(1, 8)))]
    return np.array(a), np.array(b)


# ---------------------------------------------------------------- distributions


def test_smooth_adds_eps_then_normalises() -> None:
    # [1, 0, 1] + 1 = [2, 1, 2], total 5
    np.testing.assert_allclose(M.smooth([1, 0, 1], eps=1.0), [0.4, 0.2, 0.4])
    assert M.smooth([3, 1]).sum() == pytest.approx(1.0)
    assert M.smooth([0, 0])[0] == pytest.approx(0.5)  # no mass: eps alone gives uniform


def test_counts_skip_missing() -> None:
    labels = [0, 2, 2, -1, 2]
    np.testing.assert_array_equal(M.counts(labels, 4), [1, 0, 3, 0])
    with pytest.raises(DataError, match="outside"):
        M.counts([0, 3], 3)


def test_distribution_from_probs_weighs_each_agent_once() -> None:
    # rows [.2,.8] + [.6,.4] = [.8, 1.2] -> /2; the all-NaN row is a missing agent
    probs = [[0.2, 0.8], [0.6, 0.4], [math.nan, math.nan]]
    np.testing.assert_allclose(M.distribution_from_probs(probs), [0.4, 0.6])
    # an unnormalised row [2, 6] counts like [.25, .75]: total [1.25, .75] / 2
    np.testing.assert_allclose(M.distribution_from_probs([[2, 6], [1, 0]]), [0.625, 0.375])
    with pytest.raises(DataError):
        M.distribution_from_probs([[0.5, -0.5]])
    with pytest.raises(DataError):
        M.distribution_from_probs([[math.nan, 1.0]])


# ---------------------------------------------------------------- divergences


def test_kl_hand_value() -> None:
    # p = [.5, .5], q = [.25, .75]: .5 ln(.5/.25) + .5 ln(.5/.75) = .5(0.693147) + .5(-0.405465)
    assert M.kl([1, 1], [1, 3], eps=0.0) == pytest.approx(0.143841, abs=1e-6)
    assert M.kl([0.5, 0.5], [0.25, 0.75]) == pytest.approx(0.143841, abs=1e-5)


def test_kl_smoothing_keeps_a_missed_label_finite() -> None:
    # sim never says option 1: sim = [1+e, e]/(1+2e), real = [.5, .5] (smoothing is symmetric)
    e = M.EPS
    sim = np.array([1 + e, e]) / (1 + 2 * e)
    expected = 0.5 * math.log(0.5 / sim[0]) + 0.5 * math.log(0.5 / sim[1])  # about 6.2146
    assert M.kl([1, 1], [1, 0]) == pytest.approx(expected, rel=1e-9)
    assert M.kl([1, 1], [1, 0]) == pytest.approx(6.2146, abs=1e-3)


def _exact_floor(counts: list[int]) -> float:
    """E[KL(p̂‖p)] over every sample of n labels from p, by enumerating the multinomial."""
    from itertools import product

    from scipy.stats import multinomial

    n, p = sum(counts), np.asarray(counts, dtype=float) / sum(counts)
    total = 0.0
    for head in product(range(n + 1), repeat=len(counts) - 1):
        if sum(head) <= n:
            x = [*head, n - sum(head)]
            total += multinomial.pmf(x, n, p) * M.kl(x, p)
    return total


def test_kl_floor_matches_the_exact_expectation_on_a_small_event() -> None:
    counts = [5, 2, 1, 4]  # 12 replies: small enough to enumerate every sample
    exact = _exact_floor(counts)
    assert exact > 0.05  # far from the large-n value (K-1)/2n = 0.125 only by the sampling
    assert M.kl_floor(counts, n_draws=40000) == pytest.approx(exact, rel=0.03)


def test_kl_floor_approaches_k_minus_one_over_2n() -> None:
    n = 2000
    assert M.kl_floor([1200, 400, 200, 200]) == pytest.approx(3 / (2 * n), rel=0.08)
    # options never seen do not count in K: they are never drawn
    assert M.kl_floor([1200, 400, 400, 0]) == pytest.approx(2 / (2 * n), rel=0.08)


def test_kl_floor_edge_cases() -> None:
    # every draw is the event itself: only the smoothing's own 1e-6-sized KL is left, as in kl
    assert M.kl_floor([7, 0, 0]) == pytest.approx(M.kl([7, 0, 0], [1, 0, 0]))
    assert M.kl_floor([7, 0, 0]) < 1e-5
    assert M.kl_floor([3, 2, 1], seed=4) == M.kl_floor([3, 2, 1], seed=4)
    assert M.kl_floor([30, 20, 10]) > M.kl_floor([300, 200, 100])
    with pytest.raises(DataError):
        M.kl_floor([0, 0])
    with pytest.raises(DataError):
        M.kl_floor([1, -1])
    with pytest.raises(DataError, match="whole counts"):
        M.kl_floor([0.5, 0.5])  # a mix, not counts: the floor needs the number of replies


def test_js_and_tv_hand_values() -> None:
    # disjoint supports: JS = 1 bit, TV = 1
    assert M.js([1, 0], [0, 1]) == pytest.approx(1.0)
    assert M.tv([1, 0], [0, 1]) == pytest.approx(1.0)
    # p=[1,0], q=[.5,.5], m=[.75,.25]: KL(p|m)=log2(4/3)=0.415037,
    # KL(q|m)=.5 log2(2/3) + .5 log2(2)=0.207519; JS = (0.415037+0.207519)/2
    assert M.js([1, 0], [0.5, 0.5]) == pytest.approx(0.311278, abs=1e-6)
    # counts [2,2,0] vs [0,1,1] -> [.5,.5,0] vs [0,.5,.5]: .5(.5 + 0 + .5)
    assert M.tv([2, 2, 0], [0, 1, 1]) == pytest.approx(0.5)


def test_divergences_reject_bad_input() -> None:
    with pytest.raises(DataError, match="differ in length"):
        M.kl([1, 1], [1, 1, 1])
    with pytest.raises(DataError, match="non-negative"):
        M.tv([1, -1], [1, 1])
    with pytest.raises(DataError, match="no mass"):
        M.js([0, 0], [1, 1])


@settings(max_examples=200, deadline=None)
@given(distribution_pairs())
def test_divergence_properties(pair: tuple[np.ndarray, np.ndarray]) -> None:
    p, q = pair
    assert M.kl(p, q) >= 0.0
    assert M.kl(p, p) == 0.0
    assert 0.0 <= M.js(p, q) <= 1.0
    assert 0.0 <= M.tv(p, q) <= 1.0
    assert M.js(p, q) == pytest.approx(M.js(q, p), abs=1e-12)
    assert M.tv(p, q) == pytest.approx(M.tv(q, p), abs=1e-12)
    reference = jensenshannon(p, q, base=2) ** 2
    if not math.isnan(reference):  # scipy's own NaN for near-identical inputs (see js docstring)
        assert M.js(p, q) == pytest.approx(reference, abs=1e-9)
    # Pinsker's inequality ties the two: TV <= sqrt(KL / 2) (unsmoothed KL, inf where q misses)
    assert M.tv(p, q) <= math.sqrt(M.kl(p, q, eps=0.0) / 2) + 1e-9


# ---------------------------------------------------------------- over time


def test_shares_per_round_drops_rounds_without_labels() -> None:
    labels = [0, 1, 1, -1, -1, 2, 0]
    rounds = [0, 0, 1, 1, 2, 3, 3]  # round 2 holds only a missing label
    ids, shares = M.shares_per_round(labels, rounds, 3)
    np.testing.assert_array_equal(ids, [0, 1, 3])
    np.testing.assert_allclose(shares, [[0.5, 0.5, 0], [0, 1, 0], [0.5, 0, 0.5]])
    ids, shares = M.shares_per_round([-1], [0], 2)
    assert ids.size == 0 and shares.shape == (0, 2)


def test_dtw_hand_values() -> None:
    # the sim repeats round 0: path (0,0),(0,1),(1,2) costs 0
    assert M.dtw([[1, 0], [0, 1]], [[1, 0], [1, 0], [0, 1]]) == 0.0
    # costs TV: [[0, 1], [.5, .5]]; best path diagonal (0,0),(1,1): (0 + .5) / 2 pairs
    assert M.dtw([[1, 0], [0.5, 0.5]], [[1, 0], [0, 1]]) == pytest.approx(0.25)
    # one real round against two: path (0,0),(0,1) costs 1 + 0 over 2 pairs
    assert M.dtw([[1, 0]], [[0, 1], [1, 0]]) == pytest.approx(0.5)
    with pytest.raises(DataError, match="option count"):
        M.dtw([[1, 0]], [[1, 0, 0]])
    with pytest.raises(DataError, match="without any mass"):
        M.dtw([[0, 0]], [[1, 0]])


@settings(max_examples=150, deadline=None)
@given(curve_pairs())
def test_dtw_properties(pair: tuple[np.ndarray, np.ndarray]) -> None:
    a, b = pair
    assert M.dtw(a, a) == 0.0
    value = M.dtw(a, b)
    assert value == M.dtw(b, a)
    assert 0.0 <= value <= 1.0
    if len(a) == len(b):  # the diagonal is one warping path and the optimum is no longer
        diagonal = np.mean([M.tv(x, y) for x, y in zip(a, b, strict=True)])
        assert value <= diagonal + 1e-12


@pytest.mark.parametrize(
    ("n", "sizes"),
    [
        (0, (0, 0, 0)),
        (1, (1, 0, 0)),
        (2, (1, 1, 0)),
        (3, (1, 1, 1)),
        (4, (2, 1, 1)),
        (5, (2, 2, 1)),
        (9, (3, 3, 3)),
    ],
)
def test_horizon_slices_sizes(n: int, sizes: tuple[int, int, int]) -> None:
    h = M.horizon_slices(n)
    assert list(h) == ["short", "mid", "long"]
    assert tuple(len(range(n)[s]) for s in h.values()) == sizes


@pytest.mark.parametrize("n", range(40))
def test_horizon_slices_cover_without_overlap(n: int) -> None:
    covered = [i for s in M.horizon_slices(n).values() for i in range(n)[s]]
    assert covered == list(range(n))


# ---------------------------------------------------------------- individual level


def test_f1_hand_example() -> None:
    # last pair dropped (real label missing). Pairs: (0,0) hit, (0,1) miss, (1,1) hit, (2,1) miss
    # tp=[1,1,0,0] fn=[1,0,1,0] fp=[0,2,0,0]; micro = 2*2/(4+2+2) = .5
    # per class: c0 2/3, c1 2/4, c2 0/1; class 3 absent from both -> macro = (2/3+.5+0)/3
    micro, macro = M.f1_scores([0, 0, 1, 2, -1], [0, 1, 1, 1, 2], 4)
    assert micro == pytest.approx(0.5)
    assert macro == pytest.approx((2 / 3 + 0.5) / 3)


def test_f1_missing_prediction_is_a_miss() -> None:
    # (0,-1): fn of class 0 only; (1,1) hit. micro = 2/(2+0+1); macro = (0 + 1)/2
    micro, macro = M.f1_scores([0, 1], [-1, 1], 2)
    assert micro == pytest.approx(2 / 3)
    assert macro == pytest.approx(0.5)
    assert all(math.isnan(v) for v in M.f1_scores([-1], [0], 2))


def test_nll_hand_example() -> None:
    # (-ln .5 - ln .1) / 2 = (0.693147 + 2.302585) / 2; third row has no real label
    probs = [[0.5, 0.5], [0.9, 0.1], [0.2, 0.8]]
    assert M.nll(probs, [0, 1, -1]) == pytest.approx(1.497866, abs=1e-6)
    # a zero probability is clipped at EPS: -ln(1e-6) = 13.8155
    assert M.nll([[1.0, 0.0]], [1]) == pytest.approx(-math.log(M.EPS))
    assert math.isnan(M.nll([[1.0, 0.0]], [-1]))
    with pytest.raises(DataError, match="rows"):
        M.nll([[1.0, 0.0]], [0, 1])


# ---------------------------------------------------------------- across events


def test_bootstrap_ci_edge_cases() -> None:
    assert M.bootstrap_ci([0.7]) == (0.7, 0.7, 0.7)
    assert M.bootstrap_ci([2.0, 2.0, 2.0]) == (2.0, 2.0, 2.0)
    assert all(math.isnan(v) for v in M.bootstrap_ci([math.nan]))
    mean, low, high = M.bootstrap_ci([1.0, math.nan, 3.0])  # the NaN is dropped
    assert mean == 2.0 and 1.0 <= low <= 2.0 <= high <= 3.0


def test_bootstrap_ci_deterministic_for_a_seed() -> None:
    values = np.random.default_rng(1).exponential(size=30)
    assert M.bootstrap_ci(values, seed=3) == M.bootstrap_ci(values, seed=3)
    assert M.bootstrap_ci(values, seed=3) != M.bootstrap_ci(values, seed=4)
    _, low90, high90 = M.bootstrap_ci(values, level=0.9)
    _, low99, high99 = M.bootstrap_ci(values, level=0.99)
    assert low99 < low90 < high90 < high99


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(-100, 100), min_size=2, max_size=40))
def test_bootstrap_ci_contains_the_mean(values: list[float]) -> None:
    mean, low, high = M.bootstrap_ci(values, n_resamples=500)
    assert mean == pytest.approx(np.mean(values))
    assert low - 1e-9 <= mean <= high + 1e-9
