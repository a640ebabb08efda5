"""Tests of the references without an LLM: base rate, persistence, crowd, their fitted weights."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mfray.references import (
    SMOOTH,
    WEIGHT_GRID,
    base_rate,
    crowd,
    crowd_forecast,
    crowd_rollout,
    fit_crowd_prior,
    fit_persistence_weight,
    fit_warmup_spread,
    label_counts,
    like_training,
    persistence,
    warmup_mix,
)

K = 4


def test_label_counts_ignore_missing() -> None:
    np.testing.assert_array_equal(label_counts(np.array([0, -1, 3, 3, -1]), K), [1, 0, 0, 2])
    np.testing.assert_array_equal(label_counts(np.array([], dtype=int), K), [0, 0, 0, 0])


def test_base_rate_pools_counts() -> None:
    # pooled counts [3, 1, 0, 1] over 5 labelled replies (the -1 is ignored)
    got = base_rate([np.array([0, 0, 1]), np.array([3, -1, 0])], K)
    want = (np.array([3, 1, 0, 1]) + SMOOTH) / (5 + K * SMOOTH)
    np.testing.assert_allclose(got, want, rtol=1e-12)
    assert got.sum() == pytest.approx(1.0)
    assert got[2] > 0  # smoothed: never an exact zero (KL stays finite)


def test_base_rate_pools_replies_not_events() -> None:
    # a big event weighs more than a small one: [0]*9 + [1] pooled is 90% option 0
    got = base_rate([np.zeros(9, dtype=int), np.array([1])], K)
    np.testing.assert_allclose(got, [0.9, 0.1, 0.0, 0.0], atol=1e-5)


def test_persistence_blend() -> None:
    base = np.array([0.4, 0.3, 0.2, 0.1])
    warm = np.array([1, 1, 2, -1])  # labelled mix [0, 2/3, 1/3, 0]
    got = persistence(warm, base, 0.5)
    np.testing.assert_allclose(got, [0.2, 0.3 / 2 + 1 / 3, 0.1 + 1 / 6, 0.05], atol=1e-6)
    assert got.sum() == pytest.approx(1.0)
    np.testing.assert_allclose(persistence(warm, base, 0.0), base)
    np.testing.assert_allclose(persistence(warm, base, 1.0), [0, 2 / 3, 1 / 3, 0], atol=1e-6)


@pytest.mark.parametrize("warm", [np.array([], dtype=int), np.array([-1, -1])])
def test_empty_warmup_gives_the_base_rate(warm: np.ndarray) -> None:
    base = np.array([0.4, 0.3, 0.2, 0.1])
    np.testing.assert_array_equal(persistence(warm, base, 0.8), base)


def test_weight_is_one_when_rollouts_repeat_their_warmup() -> None:
    # every event has its own mix, and its rollout has exactly its warm-up mix
    w = 8
    events = []
    for i in range(K):
        warm = np.array([i] * 5 + [(i + 1) % K] * 3)
        events.append(np.concatenate([warm, np.tile(warm, 6)]))
    assert fit_persistence_weight(events, w, K) == 1.0


def test_weight_is_zero_when_warmups_are_noise() -> None:
    # every rollout follows one shared base rate; each warm-up is one arbitrary label
    w = 4
    rollout = np.repeat(np.arange(K), [50, 20, 15, 15])
    events = [np.concatenate([np.full(w, i % K), rollout]) for i in range(8)]
    assert fit_persistence_weight(events, w, K) == 0.0


def test_weight_in_between_for_a_mixture() -> None:
    # rollouts are half warm-up mix, half shared base: neither extreme is best
    w = 10
    shared = np.repeat(np.arange(K), [10, 10, 10, 10])
    events = []
    for i in range(K):
        warm = np.full(w, i)
        events.append(np.concatenate([warm, np.full(40, i), shared]))
    weight = fit_persistence_weight(events, w, K)
    assert 0.0 < weight < 1.0
    assert weight in WEIGHT_GRID


def test_missing_labels_are_ignored_in_the_fit() -> None:
    w = 4
    rollout = np.repeat(np.arange(K), [50, 20, 15, 15])
    events = [np.concatenate([np.full(w, i % K), rollout]) for i in range(8)]
    # missing labels inside the rollouts change nothing
    noisy = [np.concatenate([e[:w], np.full(7, -1), e[w:], np.full(3, -1)]) for e in events]
    assert fit_persistence_weight(noisy, w, K) == fit_persistence_weight(events, w, K)
    # a warm-up of missing labels only: persistence falls back to the base rate for every w,
    # all weights tie and the first grid point wins
    blind = [np.concatenate([np.full(w, -1), e[w:]]) for e in events]
    assert fit_persistence_weight(blind, w, K) == 0.0


def test_no_rollout_anywhere_gives_half() -> None:
    assert fit_persistence_weight([np.array([0, 1]), np.array([2])], 5, K) == 0.5
    # an event with no rollout is skipped, the others decide
    w = 8
    events = [np.concatenate([np.array([i] * 8), np.full(40, i)]) for i in range(K)]
    assert fit_persistence_weight([*events, np.array([0, 1])], w, K) == 1.0


def test_crowd_is_the_dirichlet_posterior_predictive() -> None:
    base, shares = np.array([0.1, 0.1, 0.2, 0.6]), np.array([0.5, 0.0, 0.0, 0.5])
    # 30 decisions seen, a prior worth 10: (30 · shares + 10 · base) / 40
    np.testing.assert_allclose(crowd(shares, base, 10.0, 30), [0.4, 0.025, 0.05, 0.525])
    np.testing.assert_allclose(crowd(shares, base, 0.0, 30), shares)
    np.testing.assert_allclose(crowd(shares, base, math.inf, 30), base)
    # nothing decided yet: the (uniform) shares say nothing, the base rate stands
    np.testing.assert_allclose(crowd(np.full(4, 0.25), base, 0.0, 0), base)


def test_crowd_rollout_follows_the_simulators_schedule() -> None:
    """Rounds of 16, warm-up 20: round 1 mixes 4 real and 12 rollout agents, who see only round
    0's decisions; round 2 sees rounds 0 and 1, the rollout's own draws included."""
    labels = np.array([0] * 16 + [1] * 4 + [3] * 20)
    rng = np.random.default_rng(0)
    got = crowd_rollout(labels, np.full(K, 0.25), 0.0, 20, 16, rng)
    # round 1: shares [1, 0, 0, 0], so the 12 rollout agents all draw option 0;
    # round 2 (8 agents) then sees 28 of option 0 and 4 of option 1
    want = (12 * np.array([1.0, 0, 0, 0]) + 8 * np.array([28, 4, 0, 0]) / 32) / 20
    np.testing.assert_allclose(got, want)
    # a prior worth 16 decisions: round 1, which has seen 16, gives half shares, half base rate
    base = np.array([0.1, 0.2, 0.3, 0.4])
    np.testing.assert_allclose(crowd_rollout(labels[:32], base, 16.0, 20, 16, rng),
                               0.5 * np.array([1.0, 0, 0, 0]) + 0.5 * base)
    # an infinite prior is the base rate whatever is drawn; unlabelled agents are not scored
    np.testing.assert_allclose(crowd_rollout(labels, base, math.inf, 20, 16, rng), base)
    blind = np.where(np.arange(40) >= 32, -1, labels)
    got = crowd_rollout(blind, np.full(K, 0.25), 0.0, 20, 16, rng)
    np.testing.assert_allclose(got, [1.0, 0, 0, 0])  # only round 1's agents are scored


def test_crowd_rollout_with_expected_counts_draws_nothing_into_the_mean_field() -> None:
    """``expected``: the rollout agents add their distribution to the mean field, so the
    rollout is deterministic, and with no prior the warm-up's shares never move."""
    labels = np.array([0, 3] * 10 + [1] * 30)  # warm-up: half option 0, half option 3
    base = np.array([0.1, 0.2, 0.3, 0.4])
    got = [crowd_rollout(labels, base, 0.0, 20, 16, np.random.default_rng(s), expected=True)
           for s in range(3)]
    np.testing.assert_allclose(got[0], [0.5, 0.0, 0.0, 0.5])
    np.testing.assert_array_equal(got[0], got[1])
    np.testing.assert_array_equal(got[0], got[2])
    # a prior worth 16 decisions, by hand: round 1 (12 rollout agents) has seen round 0's 16
    # labels; each later round sees the real labels and the expected counts before it
    c = np.array([8.0, 0, 0, 8])
    p1 = (c + 16 * base) / 32
    c = c + [2, 0, 0, 2] + 12 * p1
    p2 = (c + 16 * base) / 48
    p3 = (c + 16 * p2 + 16 * base) / 64
    want = (12 * p1 + 16 * p2 + 2 * p3) / 30
    got = crowd_rollout(labels, base, 16.0, 20, 16, np.random.default_rng(0), expected=True)
    np.testing.assert_allclose(got, want)


def test_crowd_prior_fits_closed_loop() -> None:
    w = 16
    # each event keeps its warm-up's single option: following the crowd alone is exact
    sticky = [np.full(64, i) for i in range(K)]
    assert fit_crowd_prior(sticky, w, 16, K) == 0.0
    # every event's warm-up is one option that its rollout never takes: the crowd misleads
    contrary = [np.concatenate([np.full(w, i), np.tile([j for j in range(K) if j != i], 16)])
                for i in range(K)]
    assert fit_crowd_prior(contrary, w, 16, K) == math.inf
    # a warm-up that tells the event's mix only roughly: a finite prior in between
    rng = np.random.default_rng(0)
    mixes = rng.dirichlet(np.ones(K), size=8)
    noisy = [rng.choice(K, size=200, p=m) for m in mixes]
    assert 0 < fit_crowd_prior(noisy, w, 16, K) < math.inf
    # the fit is deterministic, and no labelled rollout anywhere gives the base rate
    assert fit_crowd_prior(noisy, w, 16, K) == fit_crowd_prior(noisy, w, 16, K)
    assert fit_crowd_prior([np.array([0, 1]), np.array([2, -1, -1])], 2, 16, K) == math.inf
    # with expected counts the rollout does not wander: following the crowd alone is exact
    # for sticky events, and the noisy ones still want a finite prior
    assert fit_crowd_prior(sticky, w, 16, K, expected=True) == 0.0
    assert fit_crowd_prior(contrary, w, 16, K, expected=True) == math.inf
    assert fit_crowd_prior(noisy, w, 16, K, expected=True) < math.inf


def test_warmup_mix_is_add_one() -> None:
    np.testing.assert_allclose(warmup_mix(np.array([3, 1, 0, 0])), [0.5, 0.25, 0.125, 0.125])
    np.testing.assert_allclose(warmup_mix(np.zeros(K)), np.full(K, 0.25))


def _events(mixes: np.ndarray, n: int, rng: np.random.Generator) -> list[np.ndarray]:
    return [rng.choice(K, size=n, p=m) for m in mixes]


def test_warmup_spread_tells_tight_training_events_from_scattered_ones() -> None:
    rng = np.random.default_rng(0)
    base = np.array([0.1, 0.1, 0.1, 0.7])
    tight = _events(np.tile(base, (8, 1)), 50, rng)  # one shared mix: only sampling spreads it
    scattered = _events(rng.dirichlet(np.ones(K), size=8), 50, rng)
    assert fit_warmup_spread(tight, 50, K) >= 100
    assert fit_warmup_spread(scattered, 50, K) <= 5
    assert fit_warmup_spread([np.full(10, -1)], 5, K) == 5000.0  # nothing labelled


def test_like_training_reads_the_warm_up_against_the_training_mix() -> None:
    base = np.array([0.1, 0.1, 0.1, 0.7])
    like = like_training(np.array([5, 5, 5, 35]), base, spread=200.0)
    shifted = like_training(np.array([30, 10, 5, 5]), base, spread=200.0)
    assert like > 0.95 and shifted < 0.01
    assert like_training(np.zeros(K), base, 200.0) == pytest.approx(0.5)  # no warm-up: prior
    # training events as scattered as any mix (spread 1 round a skewed base) tell little:
    # the warm-up that looked like them at spread 200 no longer does
    assert like_training(np.array([5, 5, 5, 35]), base, 1.0) < 0.5


def test_crowd_forecast_mixes_crowd_and_the_add_one_mix() -> None:
    base = np.array([0.1, 0.1, 0.1, 0.7])
    shares, n = np.array([0.4, 0.4, 0.1, 0.1]), 60
    np.testing.assert_allclose(crowd_forecast(shares, n, base, 20.0, 1.0),
                               crowd(shares, base, 20.0, n))
    np.testing.assert_allclose(crowd_forecast(shares, n, base, 20.0, 0.0),
                               (shares * n + 1) / (n + K))
    mid = crowd_forecast(shares, n, base, math.inf, 0.25)
    np.testing.assert_allclose(mid, 0.25 * base + 0.75 * (shares * n + 1) / (n + K))
    assert mid.sum() == pytest.approx(1.0)
