"""References that need no LLM: ``base-rate`` and ``persistence`` (method.md §3), and ``crowd``.

``base-rate`` and ``persistence`` give every rollout agent of an event the same label
distribution. They cost nothing and are hard to beat on distribution-level metrics, so every
comparison shows them. ``crowd`` is the mean field without an LLM: each rollout agent draws
from the Dirichlet posterior predictive of the decisions so far (the simulated population's
shares, the prior's mean the base rate), so its own draws feed the mean field as an ``mf``
rollout's do. It tells what reading the crowd can do in closed loop, with the prior's weight
fitted on the training events by simulating them.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np
from scipy.special import gammaln, rel_entr

SMOOTH = 1e-6
WEIGHT_GRID = np.linspace(0.0, 1.0, 21)
#: ``crowd``'s prior weights, in decisions (0: the mean field alone; inf: the base rate)
PRIOR_GRID = (0.0, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, math.inf)
CROWD_FIT_SEEDS = 8  # closed-loop draws per training event and prior when fitting ``crowd``


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


def _left_out(train_events: Sequence[np.ndarray], usable: Sequence[int], warmup: int,
              n_options: int) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """Each usable training event ``i`` with the base rate of the *other* training events, as an
    unseen event would see it, and the distribution of its real rollout labels."""
    for i in usable:
        others = [e for j, e in enumerate(train_events) if j != i]
        base = base_rate(others, n_options) if others else np.full(n_options, 1.0 / n_options)
        yield i, base, _dist(label_counts(train_events[i][warmup:], n_options))


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
    for i, base, real in _left_out(train_events, usable, warmup, n_options):
        for g, w in enumerate(WEIGHT_GRID):
            pred = persistence(train_events[i][:warmup], base, float(w))
            losses[g] += rel_entr(real, _dist(pred)).sum()
    return float(WEIGHT_GRID[int(np.argmin(losses))])


def crowd(shares: np.ndarray, base: np.ndarray, prior: float, n_seen: float) -> np.ndarray:
    """``crowd``'s distribution for a round: the Dirichlet posterior predictive of the next
    action, ``(n · shares + prior · base) / (n + prior)``, given the ``n`` decisions of the
    mean field so far and a Dirichlet prior with mean ``base`` worth ``prior`` decisions
    (``inf``: the base rate; 0: the shares alone). The base rate while nothing is decided."""
    if n_seen == 0 or math.isinf(prior):
        return np.asarray(base, dtype=float)
    w = n_seen / (n_seen + prior)
    return w * np.asarray(shares, dtype=float) + (1.0 - w) * np.asarray(base)


def crowd_rollout(labels: np.ndarray, base: np.ndarray, prior: float, warmup: int,
                  round_size: int, rng: np.random.Generator, expected: bool = False
                  ) -> np.ndarray:
    """``crowd``'s expected label distribution over one event's labelled rollout agents.

    The simulator's schedule: rounds of ``round_size`` agents see the mean field of every earlier
    decision; agents before ``warmup`` act with their real labels (missing ones count for
    nothing), the others draw from :func:`crowd`, and their draws join the mean field (with
    ``expected``, their distributions: ``sim.meanfield_update = "expected"``)."""
    labels = np.asarray(labels, dtype=int)
    counts = np.zeros(len(base))
    total = np.zeros(len(base))
    for start in range(0, len(labels), round_size):
        block = labels[start:start + round_size]
        seen = counts.sum()
        p = crowd(counts / max(seen, 1.0), base, prior, seen)
        rollout = np.arange(start, start + len(block)) >= warmup
        total += p * int((rollout & (block >= 0)).sum())
        real = block[~rollout]
        counts += np.bincount(real[real >= 0], minlength=len(base))
        if expected:  # the distributions join the mean field: nothing to draw
            counts += p * int(rollout.sum())
        else:
            draws = rng.choice(len(base), size=int(rollout.sum()), p=p / p.sum())
            counts += np.bincount(draws, minlength=len(base))
    return total / total.sum() if total.sum() else np.asarray(base, dtype=float)


def fit_crowd_prior(train_events: Sequence[np.ndarray], warmup: int, round_size: int,
                    n_options: int, seeds: int = CROWD_FIT_SEEDS, expected: bool = False
                    ) -> float:
    """The prior weight (in decisions, from :data:`PRIOR_GRID`) minimising the mean
    KL(real rollout ‖ ``crowd``) over the training events, each simulated in closed loop
    (:func:`crowd_rollout`) with the base rate of the *other* training events, ``seeds`` times
    per value with the same draws for every value (one is enough with ``expected``: no draw
    enters the mean field).

    Events without a labelled rollout agent are skipped; with none left, the base rate
    (``inf``)."""
    usable = [i for i, e in enumerate(train_events)
              if (np.asarray(e)[warmup:] >= 0).any()]
    if not usable:
        return math.inf
    losses = np.zeros(len(PRIOR_GRID))
    for i, base, real in _left_out(train_events, usable, warmup, n_options):
        for g, k in enumerate(PRIOR_GRID):
            for seed in range(1 if expected else seeds):
                pred = crowd_rollout(train_events[i], base, k, warmup, round_size,
                                     np.random.default_rng([i, seed]), expected)
                losses[g] += rel_entr(real, _dist(pred)).sum()
    return float(PRIOR_GRID[int(np.argmin(losses))])


# ---------------------------------------------------------------- shift-robust forecasts
#
# The training events of a dataset often share one label mix (RumourEval: two-thirds
# ``comment``), so every weight fitted on them says "ignore the warm-up" (persistence's weight
# 0, crowd's prior inf). On an event unlike them that is the wrong answer (method.md §5). The
# rule below lets the unit's own warm-up decide which kind of event it is:
#
# - H1, like the training events: the event's mix ~ Dirichlet(spread · base rate), ``spread``
#   fitted on the training events' own warm-ups (:func:`fit_warmup_spread`);
# - H0, shifted: the event's mix ~ Dirichlet(1, …, 1), any mix alike;
# - P(H1) = 1/2 before the warm-up; :func:`like_training` is P(H1 | warm-up counts), from the
#   two Dirichlet-multinomial likelihoods.
#
# A forecast under H1 is the fitted reference (persistence, crowd); under H0 the add-one mix of
# the decisions so far (:func:`warmup_mix`); the two are mixed with P(H1 | warm-up).

#: Dirichlet concentrations tried for the training events' warm-up spread
SPREAD_GRID = (1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 5000.0)
PRIOR_LIKE_TRAINING = 0.5  # P(H1) before the warm-up is read


def warmup_mix(counts: np.ndarray) -> np.ndarray:
    """The add-one (Laplace) mix of label counts: the posterior mean under Dirichlet(1, …, 1);
    uniform with no count."""
    c = np.asarray(counts, dtype=float)
    return (c + 1.0) / (c.sum() + len(c))


def log_dirichlet_multinomial(counts: np.ndarray, alpha: np.ndarray) -> float:
    """log P(counts | Dirichlet(alpha)) of one ordered sequence with these counts (the
    multinomial coefficient left out: it cancels between hypotheses)."""
    c, a = np.asarray(counts, dtype=float), np.asarray(alpha, dtype=float)
    return float(gammaln(a.sum()) - gammaln(c.sum() + a.sum())
                 + np.sum(gammaln(c + a) - gammaln(a)))


def fit_warmup_spread(train_events: Sequence[np.ndarray], warmup: int, n_options: int) -> float:
    """How tightly the training events' warm-ups gather round the base rate: the Dirichlet
    concentration (from :data:`SPREAD_GRID`) that maximises the likelihood of each training
    event's first ``warmup`` labels, with the base rate of the *other* training events as the
    mean (as an unseen event would see it). With no labelled warm-up: the grid's largest."""
    usable = [i for i, e in enumerate(train_events) if (np.asarray(e)[:warmup] >= 0).any()]
    if not usable:
        return SPREAD_GRID[-1]
    ll = np.zeros(len(SPREAD_GRID))
    for i in usable:
        others = [e for j, e in enumerate(train_events) if j != i]
        base = base_rate(others, n_options) if others else np.full(n_options, 1.0 / n_options)
        c = label_counts(np.asarray(train_events[i])[:warmup], n_options)
        ll += [log_dirichlet_multinomial(c, s * base) for s in SPREAD_GRID]
    return float(SPREAD_GRID[int(np.argmax(ll))])


def like_training(warm_counts: np.ndarray, base: np.ndarray, spread: float,
                  prior: float = PRIOR_LIKE_TRAINING) -> float:
    """P(the event is like the training events | its warm-up's label counts): H1 against H0
    of the rule above. ``prior`` without a labelled warm-up."""
    c = np.asarray(warm_counts, dtype=float)
    h1 = log_dirichlet_multinomial(c, spread * np.asarray(base, dtype=float)) + math.log(prior)
    h0 = log_dirichlet_multinomial(c, np.ones(len(c))) + math.log1p(-prior)
    return float(1.0 / (1.0 + math.exp(min(h0 - h1, 700.0))))


def shift_robust(like: np.ndarray, counts: np.ndarray, w: float) -> np.ndarray:
    """The mixed forecast: ``w`` · the forecast under H1 + (1 − ``w``) · the add-one mix of
    ``counts`` (the decisions so far)."""
    return w * np.asarray(like, dtype=float) + (1.0 - w) * warmup_mix(counts)


def crowd_forecast(shares: np.ndarray, n_seen: float, base: np.ndarray, prior: float,
                   like: float) -> np.ndarray:
    """The shift-robust ``crowd`` forecast of the next round (also ``mf-cal``'s target): under
    H1 :func:`crowd` with the prior fitted on the training events, under H0 the add-one mix of
    the decisions so far, mixed with ``like`` = P(H1 | warm-up)."""
    shares = np.asarray(shares, dtype=float)
    return shift_robust(crowd(shares, base, prior, n_seen), shares * n_seen, like)
