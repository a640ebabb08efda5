"""Does a policy read the mean field? (``mfray probe``)

The mean-field method only helps if the policy's decision depends on the population state it
is shown. The probe shows the same real agents (persona, the post they reply to, the event's
topic) the numeric mean field of ``mf`` in turn favouring each option (``strength`` of the
reactions so far, the rest shared evenly) and scores them. For each option, its
*sensitivity* is the mean probability of that option when the mean field favours it, minus
its mean probability when the mean field favours another option. A policy that ignores the
mean field scores about 0; one that follows the crowd completely scores up to
``strength − (1 − strength) / (k − 1)``. It is a cheap check of a fine-tuning recipe before a
full leave-one-event-out experiment.

:func:`drift` (``mfray probe --drift``) is the closed-loop check: starting at an event's real
mix, does the mean field stay there while the policy acts round after round? A policy that
leans towards the crowd but not all the way (E[π(·|m)] ≠ m) walks it away.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from mfray.baselines import fit_reference, labels_of_events
from mfray.config import SimConfig
from mfray.data.schema import Dataset
from mfray.errors import ConfigError
from mfray.llm import LanguageModel, model_input
from mfray.meanfield import NumericMeanField
from mfray.persona import persona_for
from mfray.policy import calibrate, choice_distribution, population_text, prompt_parts
from mfray.references import crowd_forecast
from mfray.schedule import build_units
from mfray.variants import variant


@dataclass(frozen=True)
class Probe:
    dimension: str
    options: tuple[str, ...]
    shown: dict[str, list[float]]  # favoured option -> mean probabilities of the options
    sensitivity: dict[str, float]

    @property
    def mean(self) -> float:
        return float(np.mean(list(self.sensitivity.values())))

    def markdown(self) -> str:
        head = ("| mean field favours | " + " | ".join(self.options) + " |\n|---|"
                + "---|" * len(self.options))
        rows = [f"| {o} ({self.dimension}) | " + " | ".join(f"{p:.3f}" for p in self.shown[o])
                + " |" for o in self.options]
        sens = ", ".join(f"{o} {s:+.3f}" for o, s in self.sensitivity.items())
        return "\n".join([head, *rows, "", f"sensitivity: {sens}; mean {self.mean:+.3f}"])


def _person(unit: Any, row: dict[str, Any]) -> dict[str, str]:
    """What the policy prompt shows of one real agent: topic, persona and the post replied to."""
    return {"topic": unit.topic, "persona": persona_for(unit.source, row["profile"]),
            "context": unit.contexts.get(row["context_post_id"] or "", "")}


def agents(ds: Dataset, sim: SimConfig, n: int, seed: int = 0) -> list[dict[str, str]]:
    """``n`` real agents (topic, persona, context) drawn evenly from the configured events."""
    units = build_units(ds, sim)
    if not units:
        raise ConfigError("probe: no event to draw agents from (check sim.events)")
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n):
        unit = units[k % len(units)]
        i = int(rng.integers(unit.n_agents))
        row = unit.agents.slice(i, 1).to_pylist()[0]
        out.append(_person(unit, row))
    return out


def mean_read(model: LanguageModel, people: list[dict[str, str]], population: str, dim: str,
              options: tuple[str, ...]) -> np.ndarray:
    """The mean probabilities of ``options`` over ``people`` (from :func:`agents`), each shown
    the population block ``population`` in the simulator's prompt."""
    return _read(model, people, population, dim, options).mean(axis=0)


def probe(model: LanguageModel, ds: Dataset, sim: SimConfig, *, n: int = 24,
          strength: float = 0.85, dimension: str | None = None, seed: int = 0) -> Probe:
    """Score ``n`` real agents under mean fields favouring each option in turn."""
    dim = dimension or next(iter(ds.label_space))
    if dim not in ds.label_space:
        raise ConfigError(f"probe: unknown dimension {dim!r}; the data has "
                          f"{list(ds.label_space)}")
    if not 1 / len(ds.label_space[dim]) < strength < 1:
        raise ConfigError("probe: strength must lie between an even share and 1")
    options = tuple(ds.label_space[dim])
    people = agents(ds, sim, n, seed)
    shown: dict[str, Any] = {}
    for k, favoured in enumerate(options):
        counts = {d: (1,) * len(o) for d, o in ds.label_space.items()}  # others: even
        rest = round(100 * (1 - strength) / strength / (len(options) - 1))
        counts[dim] = tuple(100 if j == k else rest for j in range(len(options)))
        pop = population_text("mf", meanfield=NumericMeanField(counts), history=[],
                              label_space=ds.label_space, meanfield_form=sim.meanfield_form,
                              tally_size=sim.tally_size)
        shown[favoured] = mean_read(model, people, pop, dim, options)
    sens = {o: float(shown[o][k] - np.mean([shown[q][k] for q in options if q != o]))
            for k, o in enumerate(options)}
    return Probe(dim, options, {o: v.tolist() for o, v in shown.items()}, sens)


@dataclass(frozen=True)
class Drift:
    """How far a policy moves the mean field in closed loop, per event (:func:`drift`)."""

    variant: str
    dimension: str
    rounds: int
    start: dict[str, list[float]]  # event -> the real mix the mean field started at
    end: dict[str, list[float]]  # event -> the mean field after the rounds
    tv: dict[str, float]  # event -> total variation between the two

    def markdown(self) -> str:
        rows = [f"| {e} | {' '.join(f'{p:.2f}' for p in self.start[e])} | "
                f"{' '.join(f'{p:.2f}' for p in self.end[e])} | {tv:.3f} |"
                for e, tv in self.tv.items()]
        return "\n".join([f"{self.variant}, {self.rounds} rounds ({self.dimension}):",
                          "| event | real mix | after | TV |", "|---|---|---|---|", *rows,
                          f"largest move: {max(self.tv.values()):.3f} TV"])


def drift(model: LanguageModel, ds: Dataset, sim: SimConfig, name: str = "mf", *,
          rounds: int = 20, dimension: str | None = None,
          start_weight: float | None = None) -> Drift:
    """The closed-loop drift check: per event, the numeric mean field starts at the event's
    real mix, worth the event's labelled replies, whose mix it is (or ``start_weight``
    decisions: ``sim.warmup`` is where a simulation's rollout starts); each round
    the next ``sim.round_size`` real agents of the event (persona, post, topic; in arrival
    order, from the first again when they run out) decide under variant ``name``'s prompt, and
    their action distributions join the mean field (``expected`` update: no sampling noise).
    A policy with E[π(·|m)] = m at the event's mix leaves it where it started."""
    traits = variant(name)
    if not traits.shows_numeric:
        raise ConfigError(f"drift: {name!r} does not read the numeric mean field")
    dim = dimension or next(iter(ds.label_space))
    options = tuple(ds.label_space[dim])
    labels_by_event = labels_of_events(ds, sim)
    out: dict[str, Any] = {"start": {}, "end": {}, "tv": {}}
    for unit in build_units(ds, replace(sim, unit="event")):
        labels = unit.agents["labels"].to_pylist()
        said = [x.get(dim) if x else None for x in labels]
        real = np.array([said.count(o) for o in options])
        start = real / real.sum()
        weight = start_weight or real.sum()
        counts = {d: (1,) * len(o) for d, o in ds.label_space.items()} | {
            dim: tuple(start * weight)}
        fit = fit_reference(name, unit, labels, labels_by_event, ds.label_space, sim, {}) \
            if traits.calibrated else None
        mf = NumericMeanField(counts)
        for r in range(rounds):
            idx = [(r * sim.round_size + j) % unit.n_agents for j in range(sim.round_size)]
            people = [_person(unit, unit.agents.slice(i, 1).to_pylist()[0]) for i in idx]
            probs = _read(model, people, population_text(
                name, meanfield=mf, history=[], label_space=ds.label_space,
                meanfield_form=sim.meanfield_form, tally_size=sim.tally_size), dim, options)
            if fit is not None:
                target = crowd_forecast(mf.shares(dim), mf.n(dim), fit.fixed[dim],
                                        fit.crowd_prior[dim], fit.like[dim])
                probs = choice_distribution(calibrate(np.log(probs), target))
            mf = mf.update(ds.label_space, {d: [None] * len(probs) for d in ds.label_space},
                           {dim: [p.tolist() for p in probs]})
        end = mf.shares(dim)
        out["start"][unit.event_id], out["end"][unit.event_id] = start.tolist(), end.tolist()
        out["tv"][unit.event_id] = float(0.5 * np.abs(end - start).sum())
    return Drift(name, dim, rounds, **out)


def _read(model: LanguageModel, people: list[dict[str, str]], population: str, dim: str,
          options: tuple[str, ...]) -> np.ndarray:
    """Each person's probabilities of ``options`` under the population block shown."""
    prompts = [model_input(model, "".join(prompt_parts(
        topic=a["topic"], population=population, context=a["context"], persona=a["persona"],
        dimension=dim, options=options))) for a in people]
    return choice_distribution(model.score(prompts, options))
