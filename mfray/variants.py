"""The variants a run simulates or training tunes (method.md §3), as data.

One frozen :class:`Variant` per variant holds the traits the engine, the prompts, training and
evaluation branch on; :data:`TABLE` lists them all and :func:`variant` looks one up. Other
modules ask a variant's traits, never compare its name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from mfray.errors import ConfigError

#: ``llm``: a language model decides, shown the prompt; ``reference``: a statistical reference
#: fitted on the training events; ``surrogate``: one of a synthetic world's own rules;
#: ``training``: a name only training and comparison tables know (``sft``); ``distilled``: a
#: distilled policy (``policy.distilled``) decides in the shards, shown an LLM variant's prompt
Kind = Literal["llm", "reference", "surrogate", "training", "distilled"]
#: which mean field a variant's decisions read: none, the numeric shares, the text summary,
#: or both (the numeric mean field is kept for every simulation, for the rounds table)
MeanFieldUse = Literal["none", "numeric", "text", "both"]
#: what the population block of an LLM variant's prompt shows, in the order it shows them
Shown = Literal["recent", "popular", "text", "numeric"]
#: how a model-free variant decides: ``base-rate`` the training events' label shares;
#: ``warmup`` the unit's own warm-up mix, add-one smoothed, nothing fitted; ``persistence``
#: the unit's warm-up mixed with the base rate (shift-robust, :mod:`mfray.references`); ``truth`` the world's rule with the
#: event's latent taste; ``posterior`` the same rule under the latent's posterior given the
#: warm-up; ``persona`` the world's persona model
Rule = Literal["base-rate", "warmup", "persistence", "truth", "posterior", "persona"]


@dataclass(frozen=True)
class Variant:
    """One variant and its traits."""

    name: str
    kind: Kind
    meanfield: MeanFieldUse = "none"
    shows: tuple[Shown, ...] = ()  # LLM variants: the population block, in order
    rule: Rule | None = None  # model-free variants: how they decide
    trains_as: str | None = None  # training-only: the variant whose prompts it is tuned on
    #: LLM variants: each round, the option probabilities of the simulation's agents are
    #: shifted by one offset per option so that their mean is the shift-robust ``crowd``
    #: forecast (the population's mix follows the mean field; the LLM decides who does what);
    #: its decisions add their distributions to the mean field, not their draws
    calibrated: bool = False

    @property
    def needs_model(self) -> bool:
        """Its decisions come from a language model (``sft``: a tuned one)."""
        return self.kind in ("llm", "training")

    @property
    def reads_prompt(self) -> bool:
        """Its decisions read the policy prompt (an LLM's or a distilled policy's)."""
        return self.kind in ("llm", "training", "distilled")

    @property
    def needs_distilled(self) -> bool:
        """A distilled policy (``policy.distilled``) decides it, in the shards."""
        return self.kind == "distilled"

    @property
    def shows_population(self) -> bool:
        """A simulation of it has a population block in its prompt."""
        return self.kind in ("llm", "distilled")

    @property
    def simulated(self) -> bool:
        """``sim.variants`` may name it."""
        return self.kind != "training"

    @property
    def prompt_variant(self) -> str:
        """The simulator variant whose prompts its training examples use."""
        return self.trains_as or self.name

    @property
    def keeps_text(self) -> bool:
        """Its simulations keep a text mean field, rewritten by the mean-field model."""
        return self.meanfield in ("text", "both")

    @property
    def shows_numeric(self) -> bool:
        """Its prompt shows the numeric mean field (in ``sim.meanfield_form``)."""
        return "numeric" in self.shows

    @property
    def needs_fit(self) -> bool:
        """It reads a fit on the training events (a reference, or a calibrated LLM variant's
        forecast)."""
        return self.kind == "reference" or self.calibrated

    @property
    def needs_world(self) -> bool:
        """It exists only on a synthetic-world dataset."""
        return self.kind == "surrogate"

    @property
    def needs_event_units(self) -> bool:
        """It reads the event's first replies and the shares they saw (``sim.unit = event``)."""
        return self.rule == "posterior"


TABLE: tuple[Variant, ...] = (
    Variant("state", "llm"),
    Variant("recent", "llm", shows=("recent",)),
    Variant("popular", "llm", shows=("popular",)),
    Variant("mf", "llm", "numeric", shows=("numeric",)),
    Variant("mf-text", "llm", "text", shows=("text",)),
    Variant("mf-hybrid", "llm", "both", shows=("text", "numeric")),
    # mf calibrated in closed loop to the shift-robust crowd forecast: the recommended variant
    Variant("mf-cal", "llm", "numeric", shows=("numeric",), calibrated=True),
    # mf decided by a policy distilled from an LLM's answers (mfray distill): fast, for large
    # populations, in the same run as the LLM's own variants
    Variant("mf-distilled", "distilled", "numeric", shows=("numeric",)),
    Variant("sft", "training", trains_as="state"),  # the no-mean-field fine-tuning baseline
    Variant("base-rate", "reference", rule="base-rate"),
    Variant("warmup", "reference", rule="warmup"),
    Variant("persistence", "reference", rule="persistence"),
    # crowd: the base rate as a prior, updated by the simulated mean field
    Variant("crowd", "reference", "numeric", rule="base-rate"),
    Variant("oracle", "surrogate", "numeric", rule="truth"),
    Variant("bayes", "surrogate", "numeric", rule="posterior"),
    Variant("surrogate-mf", "surrogate", "numeric", rule="persona"),
    Variant("surrogate-state", "surrogate", rule="persona"),
)
_BY_NAME = {v.name: v for v in TABLE}

#: the variant mfray recommends (results/shift-robust.md): it reads from the warm-up whether an
#: event is like the training events, and its rollouts do not drift
RECOMMENDED = "mf-cal"
#: what ``sim.variants`` may name, in table order
VARIANTS = tuple(v.name for v in TABLE if v.simulated)
#: what ``train.variant`` may name: an LLM variant's prompts, or a training-only name
TRAIN_VARIANTS = tuple(v.name for v in TABLE if v.needs_model)


def variant(name: str) -> Variant:
    """The variant called ``name``; a :class:`ConfigError` naming the choices otherwise."""
    try:
        return _BY_NAME[name]
    except (KeyError, TypeError):
        raise ConfigError(f"unknown variant {name!r}; choose from "
                          + ", ".join(_BY_NAME)) from None


def twin_label(name: str, intervention: str | None = None) -> str:
    """The name a simulation's rows carry in the ``variant`` column: the variant's own, or
    ``variant+intervention`` for the twin that had an intervention (an intervention's name has
    no ``+``)."""
    return name if intervention is None else f"{name}+{intervention}"


def known(name: object) -> bool:
    """Whether ``name`` is a variant of the table (a stored label may be another name)."""
    return isinstance(name, str) and name in _BY_NAME
