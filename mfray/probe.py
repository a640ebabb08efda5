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
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from mfray.config import SimConfig
from mfray.data.schema import Dataset
from mfray.errors import ConfigError
from mfray.llm import LanguageModel, model_input
from mfray.meanfield import NumericMeanField
from mfray.persona import persona_for
from mfray.policy import choice_distribution, population_text, prompt_parts
from mfray.schedule import build_units


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
        out.append({"topic": unit.topic, "persona": persona_for(unit.source, row["profile"]),
                    "context": unit.contexts.get(row["context_post_id"] or "", "")})
    return out


def mean_read(model: LanguageModel, people: list[dict[str, str]], population: str, dim: str,
              options: tuple[str, ...]) -> np.ndarray:
    """The mean probabilities of ``options`` over ``people`` (from :func:`agents`), each shown
    the population block ``population`` in the simulator's prompt."""
    prompts = [model_input(model, "".join(prompt_parts(
        topic=a["topic"], population=population, context=a["context"], persona=a["persona"],
        dimension=dim, options=options))) for a in people]
    return choice_distribution(model.score(prompts, options)).mean(axis=0)


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
