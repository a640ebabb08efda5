"""The numeric mean field: the distribution of each action dimension over the decisions so far.

Pure and exact. The text mean field (an LLM that rewrites a summary each round) is kept by the
engine (:mod:`mfray.engine.population`, its prompt :func:`mfray.policy.meanfield_prompt`); it
takes the same inputs (previous state, the round's decisions sorted by agent index).
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from mfray.data.schema import LabelSpace

NO_REACTIONS = "no reactions yet"
TALLY_SIZE = 20  # reactions written out by the ``tally`` form
_TALLY = "typical reactions"

Form = Literal["shares", "tally"]
FORMS: tuple[Form, ...] = ("shares", "tally")
#: what a model decision adds to the mean field: its drawn label (one count), or its whole
#: action distribution (the expected count of each option; see ``SimConfig.meanfield_update``)
Update = Literal["draws", "expected"]


def tally(shares: np.ndarray, size: int = TALLY_SIZE) -> np.ndarray:
    """``size`` reactions in the given shares: the floors of ``size * shares`` plus one for the
    largest remainders (ties to the earlier option), so the counts sum to ``size``."""
    q = np.asarray(shares, dtype=float) * size
    counts = np.floor(q + 1e-9).astype(int)
    short = size - int(counts.sum())
    remainders = np.round(q - counts, 9)  # 0.33 * 20 and 0.08 * 20 tie, as written
    counts[np.argsort(-remainders, kind="stable")[:short]] += 1
    return counts


@dataclass(frozen=True)
class NumericMeanField:
    """Counts of each label per dimension over all decisions so far (options in label order).

    Whole numbers while every decision counts its label; fractional once decisions count their
    action distributions (:meth:`update` with ``probs``)."""

    counts: Mapping[str, tuple[float, ...]]

    @classmethod
    def empty(cls, label_space: LabelSpace) -> NumericMeanField:
        """The mean field before any decision: a real empty value, not a printed list."""
        return cls({dim: (0,) * len(options) for dim, options in label_space.items()})

    def update(self, label_space: LabelSpace,
               labels: Mapping[str, Sequence[str | None]],
               probs: Mapping[str, Sequence[Sequence[float] | None]] | None = None
               ) -> NumericMeanField:
        """Add one round's decisions (None labels, e.g. failed decisions, are not counted).

        ``probs`` (aligned with ``labels``): a decision with a distribution adds it, the
        expected count of each option, instead of one count for its label; the others (real
        actions, injected posts) add their label."""
        out = {}
        for dim, options in label_space.items():
            add = np.zeros(len(options))
            dist = (probs or {}).get(dim) or [None] * len(labels.get(dim, ()))
            for label, p in zip(labels.get(dim, ()), dist, strict=True):
                if p is not None:
                    add += np.asarray(p, dtype=float)
                elif label is not None:
                    add[options.index(label)] += 1
            out[dim] = tuple(_count(c) for c in np.asarray(self.counts[dim], dtype=float) + add)
        return NumericMeanField(out)

    def n(self, dim: str) -> int:
        """The number of decisions counted (expected counts sum to whole decisions)."""
        return round(float(sum(self.counts[dim])))

    def shares(self, dim: str) -> np.ndarray:
        """Shares of each option; uniform while nothing has been decided."""
        c = np.asarray(self.counts[dim], dtype=float)
        return c / c.sum() if c.sum() else np.full(len(c), 1.0 / len(c))

    def render(self, label_space: LabelSpace, form: Form = "shares",
               tally_size: int = TALLY_SIZE) -> str:
        """The prompt form of the mean field, one line per dimension.

        ``shares`` (the default): the options most common first (ties in label order),
        ``stance: comment 65%, support 19%, query 8%, deny 7% (n=120)``. SmolLM2-135M shown
        them in label order barely reacts to the shares (``mfray probe`` sensitivity +0.007 on
        RumourEval agents) and copies the first option it reads (+0.25 with this order).

        ``tally``: the shares as ``tally_size`` reactions in a shuffled order,
        ``stance: 20 typical reactions: comment query comment … support (n=120)``. The order
        is a fixed function of the counts (the same line for the same counts, on any shard).
        A small model can learn to count words where it does not learn to read percentages:
        tuned on the shares it learns which option is listed first, not the numbers
        (results/synthetic-world.md)."""
        if form not in FORMS:
            raise ValueError(f"unknown mean-field form {form!r}; one of {', '.join(FORMS)}")
        lines = []
        for dim, options in label_space.items():
            if self.n(dim) == 0:
                lines.append(f"{dim}: {NO_REACTIONS}")
                continue
            if form == "tally":
                lines.append(self.tally_line(dim, options, tally_size))
                continue
            shares = self.shares(dim)
            order = np.argsort(-np.asarray(self.counts[dim]), kind="stable")
            parts = ", ".join(f"{options[k]} {shares[k]:.0%}" for k in order)
            lines.append(f"{dim}: {parts} (n={self.n(dim)})")
        return "\n".join(lines)

    def tally_line(self, dim: str, options: Sequence[str], tally_size: int = TALLY_SIZE,
                   order_seed: int | None = None) -> str:
        """The ``tally`` form's line for ``dim`` (which must have reactions). The words are
        shuffled by ``order_seed``; by default a fixed function of the counts, as the prompts
        use. Another seed gives the same words in another order (``results/scripts/tally_order.py``
        measures how much a policy's read depends on the order alone)."""
        counts = self.counts[dim]
        order = np.argsort(-np.asarray(counts), kind="stable")
        words = np.repeat(np.asarray(options)[order], tally(self.shares(dim), tally_size)[order])
        if order_seed is None:
            order_seed = zlib.crc32(repr((dim, tuple(_count(c, 6) for c in counts))).encode())
        words = np.random.default_rng(order_seed).permutation(words)
        return f"{dim}: {len(words)} {_TALLY}: {' '.join(words)} (n={self.n(dim)})"


def _count(c: float, digits: int = 9) -> float:
    """A count as stored: an int when whole (labels only), else rounded to ``digits`` decimals,
    so that sums in another order give the same mean field."""
    r = round(float(c), digits)
    return int(r) if r.is_integer() else r
