"""The policy role, thin: what each variant shows the model about the population, the prompt,
and the choice-mode decision (method.md §1–3).

Variants differ only in the population block of the shared prompt part:
``state`` shows nothing, ``recent`` the last ``k`` actions, ``popular`` the ``k`` actions with
the most followers among the last ``window`` (missing follower counts rank last, never first),
``mf`` the numeric mean field. The text mean field (``mf-text``, ``mf-hybrid``) plugs in here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from mfray.errors import ConfigError
from mfray.meanfield import NumericMeanField
from mfray.prompts import render_parts

ROLE = "policy"


@dataclass(frozen=True)
class PastAction:
    """One earlier decision of the same simulation, as later agents may see it."""

    labels: Mapping[str, str | None]
    text: str | None
    followers: int | None


def _describe(action: PastAction, dims: Sequence[str]) -> str:
    labels = ", ".join(str(action.labels.get(d)) for d in dims
                       if action.labels.get(d) is not None)
    text = f': "{action.text}"' if action.text else ""
    return f"- {labels or 'unknown'}{text}"


def population_text(variant: str, *, meanfield: NumericMeanField,
                    history: Sequence[PastAction], label_space: Mapping[str, Sequence[str]],
                    recent_k: int = 5, popular_k: int = 5, popular_window: int = 30) -> str:
    """The population block of the shared prompt part ("" for ``state``)."""
    dims = list(label_space)
    if variant == "state":
        return ""
    if variant == "mf":
        return f"How the other users have reacted so far:\n{meanfield.render(label_space)}\n\n"
    if variant in ("recent", "popular"):
        if not history:
            return "Other users' replies: none yet.\n\n"
        if variant == "recent":
            shown = list(history[-recent_k:])
            head = f"The {len(shown)} latest replies by other users:"
        else:
            window = list(enumerate(history[-popular_window:]))
            # most followers first; missing counts last; ties: the more recent first
            window.sort(key=lambda p: (p[1].followers is None, -(p[1].followers or 0), -p[0]))
            shown = [a for _, a in window[:popular_k]]
            head = f"The {len(shown)} replies by the most-followed recent users:"
        return head + "\n" + "\n".join(_describe(a, dims) for a in shown) + "\n\n"
    raise ConfigError(f"variant {variant!r} has no population block yet (the text mean field "
                      "arrives with mf-text / mf-hybrid)")


def prompt_parts(*, topic: str, population: str, context: str, persona: str, dimension: str,
                 options: Sequence[str]) -> tuple[str, str]:
    """The policy prompt as (shared prefix, agent suffix), from the one policy template."""
    return render_parts(ROLE, {"topic": topic, "population": population},
                        {"context": context, "persona": persona, "dimension": dimension,
                         "options": ", ".join(options)})


def choice_distribution(log_scores: np.ndarray) -> np.ndarray:
    """Rows of option log-scores -> probability rows (a stable softmax)."""
    z = np.asarray(log_scores, dtype=float)
    z = z - z.max(axis=1, keepdims=True)
    p = np.exp(z)
    return p / p.sum(axis=1, keepdims=True)
