"""Policies that need no language model: their fits, and vectorised functions the shards call.

- ``base-rate`` / ``persistence`` (method.md §3): one fixed distribution per simulation and
  dimension, fitted by :func:`reference_fits` on the training events only
  (:func:`fit_reference` also writes the rows of the run's ``references.parquet``).
- ``crowd``: the Dirichlet posterior predictive of the simulated mean field, each round, with
  the base rate as the prior's mean and the prior weight :func:`crowd_priors` fits on the
  training events in closed loop.
- ``oracle`` / ``bayes`` / ``surrogate-mf`` / ``surrogate-state``: the synthetic world's own
  rule, given the simulated mean field (oracle); the same rule with the event's latent taste
  not known but inferred from the warm-up (bayes, :func:`bayes_latent`: the best a policy can
  do that knows the world but not the event); a persona model reweighted to the mean field; or
  the persona model alone. They exist only on a synthetic-world dataset.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from mfray.config import SimConfig
from mfray.data.mix import source_event
from mfray.data.schema import STANCE, STANCE_OPTIONS, Dataset
from mfray.data.synthetic import BASE_SHARES, SCEPTIC_DESCRIPTION, SyntheticWorld
from mfray.errors import ConfigError
from mfray.llm import ScriptedModel
from mfray.persona import FOLLOWER_BUCKETS
from mfray.references import (
    base_rate,
    fit_crowd_prior,
    fit_persistence_weight,
    fit_warmup_spread,
    label_counts,
    like_training,
    persistence,
    shift_robust,
    warmup_mix,
)
from mfray.schedule import Unit, build_units, stable_hash
from mfray.variants import variant

SURROGATE_SMOOTH = 0.02
CROWD_FIT_EVENTS = 64  # at most this many training events in ``crowd``'s fit


def label_indices(labels: Sequence[Mapping[str, str | None]], dim: str,
                  options: Sequence[str]) -> np.ndarray:
    """Real label indices of agents in arrival order (-1 where unlabelled)."""
    return np.array([options.index(lab[dim]) if lab and lab[dim] is not None else -1
                     for lab in labels], dtype=int)


def labels_of_events(ds: Any, cfg: SimConfig) -> dict[str, list[Any]]:
    """Every event's agents' labels in arrival order (each event one unit, whatever the run
    selects): what the fits read of the training events."""
    every = replace(cfg, unit="event", events=(), min_replies=0, train_events=())
    return {u.event_id: u.agents["labels"].to_pylist() for u in build_units(ds, every)}


def training_events(event_id: str, labels_by_event: Mapping[str, Sequence[Mapping]],
                    cfg: SimConfig) -> tuple[str, ...]:
    """The events the references fit on for ``event_id``: ``cfg.train_events``, or else every
    other real event of the dataset (leave one event out; resampled copies, ``mfray data
    mix``, are evaluation events, never another event to fit on)."""
    source = source_event(event_id)
    return cfg.train_events or tuple(e for e in labels_by_event
                                     if source_event(e) == e != source)


def crowd_fit_events(event_id: str, labels_by_event: Mapping[str, Sequence[Mapping]],
                     cfg: SimConfig) -> tuple[str, ...]:
    """The training events ``crowd``'s prior is fitted on, in name order: all of them, or the
    first :data:`CROWD_FIT_EVENTS` by a stable hash of their names where there are more. The fit
    simulates every event it reads, so this bounds its cost on a dataset of thousands of
    events, where most held-out events then share one fit (the engine fits once per set)."""
    train = training_events(event_id, labels_by_event, cfg)
    if len(train) > CROWD_FIT_EVENTS:
        train = sorted(train, key=stable_hash)[:CROWD_FIT_EVENTS]
    return tuple(sorted(train))


def _labels(events: Sequence[str], labels_by_event: Mapping[str, Sequence[Mapping]], dim: str,
            options: Sequence[str]) -> list[np.ndarray]:
    return [label_indices(labels_by_event[e], dim, options) for e in events]


@dataclass(frozen=True)
class ReferenceFit:
    """A reference's fit for one unit and dimension: the distribution every rollout agent gets
    (``crowd`` and ``mf-cal``: the prior's mean, the base rate), ``persistence``'s fitted
    weight of the warm-up's mix, and P(the unit is like the training events | its warm-up)
    where the variant is shift-robust (:mod:`mfray.references`)."""

    probs: np.ndarray
    weight: float | None = None
    like: float | None = None


def reference_fits(name: str, event_id: str, unit_labels: Sequence[Mapping],
                   labels_by_event: Mapping[str, Sequence[Mapping]],
                   label_space: Mapping[str, Sequence[str]], cfg: SimConfig
                   ) -> dict[str, ReferenceFit]:
    """The fit per dimension of a variant that :attr:`~mfray.variants.Variant.needs_fit`, for
    one unit, on the training events only; the unit's own labels are read for its warm-up
    agents only."""
    traits = variant(name)
    out = {}
    for dim, options in label_space.items():
        train_labels = _labels(training_events(event_id, labels_by_event, cfg),
                               labels_by_event, dim, options)
        base = base_rate(train_labels, len(options))
        warm = label_indices(unit_labels, dim, options)[: cfg.warmup]
        counts = label_counts(warm, len(options))
        if traits.rule == "warmup":
            out[dim] = ReferenceFit(warmup_mix(counts))
            continue
        if traits.rule == "base-rate" and traits.meanfield == "none":
            out[dim] = ReferenceFit(base)
            continue
        like = like_training(counts, base, fit_warmup_spread(train_labels, cfg.warmup,
                                                             len(options)))
        if traits.rule == "persistence":
            weight = fit_persistence_weight(train_labels, cfg.warmup, len(options))
            out[dim] = ReferenceFit(shift_robust(persistence(warm, base, weight), counts, like),
                                    weight, like)
        else:  # crowd, mf-cal: the crowd's prior mean; its forecast is made each round
            out[dim] = ReferenceFit(base, like=like)
    return out


def crowd_priors(fit_events: Sequence[str], labels_by_event: Mapping[str, Sequence[Mapping]],
                 label_space: Mapping[str, Sequence[str]], cfg: SimConfig,
                 expected: bool | None = None) -> dict[str, float]:
    """``crowd``'s prior weight per dimension, fitted by simulating ``fit_events``
    (:func:`crowd_fit_events`) in closed loop with the run's warm-up, round size and
    mean-field update (``expected``: what the variant's decisions add, when not the run's)."""
    if expected is None:
        expected = cfg.meanfield_update == "expected"
    return {dim: fit_crowd_prior(_labels(fit_events, labels_by_event, dim, options),
                                 cfg.warmup, cfg.round_size, len(options), expected=expected)
            for dim, options in label_space.items()}


def adds_expected(name: str, cfg: SimConfig) -> bool:
    """Whether a simulation of ``name`` adds its decisions' action distributions to the mean
    field (the run's ``sim.meanfield_update = expected``, or a calibrated variant always: a
    simulated draw tells nothing about the event, and its noise would walk the forecast)."""
    return cfg.meanfield_update == "expected" or variant(name).calibrated


@dataclass(frozen=True)
class UnitFit:
    """What a simulation of one unit gets from :func:`fit_reference`."""

    fixed: dict[str, np.ndarray]  # per dimension: the distribution (crowd: the prior's mean)
    crowd_prior: dict[str, float] | None  # crowd, mf-cal: the prior's weight, in decisions
    like: dict[str, float] | None  # shift-robust variants: P(like the training events)
    rows: list[dict[str, Any]]  # the run's references.parquet rows


def fit_reference(name: str, unit: Unit, labels: list[Any],
                  labels_by_event: dict[str, list[Any]], label_space: dict[str, Any],
                  cfg: SimConfig, priors: dict[tuple[str, ...], dict[str, float]]) -> UnitFit:
    """A variant's fit for one unit (``priors`` caches ``crowd``'s prior weights by training
    set), with its ``references.parquet`` rows."""
    fits = reference_fits(name, unit.event_id, labels, labels_by_event, label_space, cfg)
    fit, prior = (), None
    if variant(name).meanfield != "none":
        fit = crowd_fit_events(unit.event_id, labels_by_event, cfg)
        key = (*fit, f"expected={adds_expected(name, cfg)}")
        if key not in priors:
            priors[key] = crowd_priors(fit, labels_by_event, label_space, cfg,
                                       adds_expected(name, cfg))
        prior = priors[key]
    n_train = len(training_events(unit.event_id, labels_by_event, cfg))
    rows = [{"unit_key": unit.key(), "event_id": unit.event_id, "variant": name,
             "dimension": d, "options": list(label_space[d]), "probs": f.probs.tolist(),
             "persistence_weight": f.weight, "like_training": f.like,
             "n_train_events": n_train, "crowd_prior": None if prior is None else prior[d],
             "n_fit_events": len(fit) if prior is not None else None}
            for d, f in fits.items()]
    like = {d: f.like for d, f in fits.items()} if any(
        f.like is not None for f in fits.values()) else None
    return UnitFit({d: f.probs for d, f in fits.items()}, prior, like, rows)


def bayes_latent(world: SyntheticWorld, warmup: int, features: np.ndarray,
                 labels: list[Any]) -> np.ndarray:
    """``bayes``'s belief about the event latent: its posterior given the unit's warm-up
    agents, the event's first agents (the config allows ``bayes`` on event units only: a
    thread's first replies saw the whole event's shares, which its own replies do not give)."""
    warm = min(warmup, len(labels))
    y = label_indices(labels[:warm], STANCE, STANCE_OPTIONS)
    return world.latent_posterior(features[:warm], y)


def load_world(variant: str, ds: Dataset) -> SyntheticWorld:
    """The synthetic world behind a dataset, or a clear error for a surrogate elsewhere."""
    try:
        return SyntheticWorld.from_dataset(ds)
    except ValueError:
        raise ConfigError(f"variant {variant!r} exists only on a synthetic-world dataset "
                          f"(this one is {ds.name!r})") from None


def surrogate_probs(name: str, world: SyntheticWorld, event_id: str, x: np.ndarray,
                    shares: np.ndarray, n_seen: int, latent: np.ndarray | None = None
                    ) -> np.ndarray:
    """Stance probabilities of agents with features ``x`` given the mean field's shares
    (``bayes``: and ``latent``, samples of the event latent's posterior)."""
    traits = variant(name)
    if not traits.needs_world:
        raise ConfigError(f"{name!r} is not a surrogate variant")
    if traits.rule == "truth":  # the world's truth, given the simulated mean field
        return world.probs(event_id, x, shares)
    if traits.rule == "posterior":
        if latent is None:
            raise ConfigError(f"{name} needs the posterior of the event latent "
                              "(latent_posterior)")
        return world.predictive(latent, x, shares)
    q = world.persona_probs(x)
    if traits.meanfield == "none" or n_seen == 0:
        return q
    return reweight(q, shares)


def reweight(q: np.ndarray, shares: np.ndarray) -> np.ndarray:
    """Shift persona probabilities towards the mean field: ``q · (m + a) / (base + a)``.

    Per agent (never a mean over the round's agents, which would depend on the sharding), with
    the world's population base rates as the reference point."""
    p = np.atleast_2d(q) * (shares + SURROGATE_SMOOTH) / (BASE_SHARES + SURROGATE_SMOOTH)
    return p / p.sum(axis=1, keepdims=True)


_STANCE_LINE = re.compile(r"^stance: (.*) \(n=\d+\)$", re.MULTILINE)
_SHARE = re.compile(r"(\w+) (\d+)%")
#: a representative follower count for each persona bucket (geometric middle)
_FOLLOWERS = {label: (10.0 if bound == 100 else math.sqrt(bound * bound / 10))
              for bound, label in FOLLOWER_BUCKETS if math.isfinite(bound)}
_FOLLOWERS["millions"] = 3e6


def world_rule_model(world: SyntheticWorld) -> ScriptedModel:
    """A scripted policy that follows a synthetic world's own rule, reading only the prompt.

    From the persona it reads verified, the sceptic bio and the followers bucket; from the
    population block, the mean field's shares when the prompt shows them. Without shares
    (``state``, ``recent``, ``popular``) it answers with the persona rule alone; with them it
    reweights the persona rule towards the shares, as ``surrogate-mf`` does.
    """

    def fn(prompt: str, options: Sequence[str]) -> np.ndarray:
        x = np.array([[
            float("verified: yes" in prompt),
            float(SCEPTIC_DESCRIPTION in prompt),
            (np.log10(_followers(prompt) + 1.0) - 2.5) / 1.5,
        ]])
        q = world.persona_probs(x)[0]
        shares = _stance_shares(prompt)
        return q if shares is None else reweight(q, shares)[0]

    return ScriptedModel(fn=fn, model_id="scripted-world")


def _stance_shares(prompt: str) -> np.ndarray | None:
    """The mean field's stance shares in label order, whatever order the prompt lists them in;
    None without a mean field (or before any reaction)."""
    line = _STANCE_LINE.search(prompt)
    if line is None:
        return None
    shown = {o: float(v) / 100.0 for o, v in _SHARE.findall(line.group(1))}
    if set(shown) != set(STANCE_OPTIONS):
        return None
    return np.array([shown[o] for o in STANCE_OPTIONS])


def _followers(prompt: str) -> float:
    m = re.search(r"followers: ([a-z ]+?)[;\n]", prompt)
    return _FOLLOWERS.get(m.group(1), 300.0) if m else 300.0
