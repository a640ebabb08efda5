"""Interventions (method.md §5): typed config, applied by pure functions to a simulation's
population state at the end of a chosen round.

- ``inject``: ``count`` extra actions with a given label (and optional text) join the population
  after round ``round``, as if ``count`` more users had posted them: they enter the mean field
  and the recent-action window that later agents see.
- ``edit``: the numeric mean field of ``dimension`` is set to ``shares`` (keeping its size).

Every intervened simulation runs next to its twin without the intervention; the twins share
their random numbers (draws depend on seed, unit and agent only), so the difference between them
is the intervention's effect, not noise.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from mfray.errors import ConfigError
from mfray.meanfield import NumericMeanField
from mfray.policy import PastAction


@dataclass(frozen=True)
class Intervention:
    """One intervention; ``name`` labels the intervened simulations (``variant+name``)."""

    name: str
    round: int
    kind: Literal["inject", "edit"] = "inject"
    dimension: str = "stance"
    label: str = ""  # inject: the label of the injected actions
    count: int = 0  # inject: how many actions
    text: str | None = None  # inject: their text (shown by `recent` / `popular`)
    shares: tuple[float, ...] = ()  # edit: the new shares of `dimension`, in option order

    def __post_init__(self) -> None:
        if not self.name or "+" in self.name:
            raise ConfigError(f"intervention name {self.name!r}: non-empty, without '+'")
        if self.round < 0:
            raise ConfigError(f"intervention {self.name}: round must be >= 0")
        if self.kind == "inject" and (self.count < 1 or not self.label):
            raise ConfigError(f"intervention {self.name}: inject needs count >= 1 and a label")
        if self.kind == "edit" and (not self.shares or min(self.shares) < 0
                                    or abs(sum(self.shares) - 1) > 1e-6):
            raise ConfigError(f"intervention {self.name}: edit needs shares that sum to 1")

    def check(self, label_space: Mapping[str, Sequence[str]]) -> None:
        """Reject a dimension, label or shares vector the dataset does not have."""
        options = label_space.get(self.dimension)
        if options is None:
            raise ConfigError(f"intervention {self.name}: unknown dimension {self.dimension!r}")
        if self.kind == "inject" and self.label not in options:
            raise ConfigError(f"intervention {self.name}: {self.label!r} is not one of "
                              f"{list(options)}")
        if self.kind == "edit" and len(self.shares) != len(options):
            raise ConfigError(f"intervention {self.name}: {len(options)} shares needed")


def apply(intervention: Intervention, label_space: Mapping[str, Sequence[str]],
          meanfield: NumericMeanField, history: Sequence[PastAction]
          ) -> tuple[NumericMeanField, list[PastAction]]:
    """The population state after the intervention (pure: the inputs are not changed)."""
    space = {d: tuple(o) for d, o in label_space.items()}
    if intervention.kind == "inject":
        labels = {d: [intervention.label if d == intervention.dimension else None]
                  * intervention.count for d in space}
        injected = [PastAction({intervention.dimension: intervention.label}, intervention.text,
                               None)] * intervention.count
        return meanfield.update(space, labels), [*history, *injected]
    n = meanfield.n(intervention.dimension)
    counts = dict(meanfield.counts)
    counts[intervention.dimension] = tuple(int(c) for c in
                                           np.round(np.asarray(intervention.shares) * n))
    return NumericMeanField(counts), list(history)
