"""The policy role, thin: what each variant shows the model about the population, the prompt,
and the choice-mode decision (method.md §1–3).

Variants differ only in the population block of the shared prompt part, which shows what the
variant's :attr:`~mfray.variants.Variant.shows` lists: nothing (``state``), the last ``k``
actions (``recent``), the ``k`` actions with the most followers among the last ``window``
(``popular``; missing follower counts rank last, never first), the numeric mean field (``mf``),
the text mean field (``mf-text``), or both (``mf-hybrid``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from mfray.errors import ConfigError
from mfray.meanfield import NO_REACTIONS, TALLY_SIZE, Form, NumericMeanField
from mfray.prompts import render_parts
from mfray.variants import variant

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


def population_text(name: str, *, meanfield: NumericMeanField,
                    history: Sequence[PastAction], label_space: Mapping[str, Sequence[str]],
                    recent_k: int = 5, popular_k: int = 5, popular_window: int = 30,
                    summary: str | None = None, meanfield_form: Form = "shares",
                    tally_size: int = TALLY_SIZE) -> str:
    """The population block of the shared prompt part of LLM variant ``name``: what its
    :attr:`~mfray.variants.Variant.shows` lists, in that order ("" for ``state``). ``summary``
    is the text mean field; the numeric one is written in ``meanfield_form``, with
    ``tally_size`` reactions for ``tally``."""
    traits = variant(name)
    if not traits.shows_population:
        raise ConfigError(f"variant {name!r} has no population block")
    blocks = []
    for shown in traits.shows:
        if shown == "numeric":
            blocks.append("How the other users have reacted so far:\n"
                          f"{meanfield.render(label_space, meanfield_form, tally_size)}\n\n")
        elif shown == "text":
            blocks.append(f"Summary of the other users' reactions so far:\n"
                          f"{summary or NO_REACTIONS}\n\n")
        else:
            blocks.append(_replies(shown, history, list(label_space), recent_k, popular_k,
                                   popular_window))
    return "".join(blocks)


def _replies(shown: str, history: Sequence[PastAction], dims: Sequence[str], recent_k: int,
             popular_k: int, popular_window: int) -> str:
    """The ``recent`` or ``popular`` block: other users' latest replies, or those of the
    most-followed recent users."""
    if not history:
        return "Other users' replies: none yet.\n\n"
    if shown == "recent":
        replies = list(history[-recent_k:])
        head = f"The {len(replies)} latest replies by other users:"
    else:
        window = list(enumerate(history[-popular_window:]))
        # most followers first; missing counts last; ties: the more recent first
        window.sort(key=lambda p: (p[1].followers is None, -(p[1].followers or 0), -p[0]))
        replies = [a for _, a in window[:popular_k]]
        head = f"The {len(replies)} replies by the most-followed recent users:"
    return head + "\n" + "\n".join(_describe(a, dims) for a in replies) + "\n\n"


def prompt_parts(*, topic: str, population: str, context: str, persona: str, dimension: str,
                 options: Sequence[str]) -> tuple[str, str]:
    """The policy prompt as (shared prefix, agent suffix), from the one policy template."""
    return render_parts(ROLE, {"topic": topic, "population": population},
                        {"context": context, "persona": persona, "dimension": dimension,
                         "options": ", ".join(options)})


def text_prompt_parts(*, topic: str, population: str, context: str, persona: str
                      ) -> tuple[str, str]:
    """Text mode's policy prompt (shared prefix, agent suffix): the user writes the reply."""
    return render_parts("policy_text", {"topic": topic, "population": population},
                        {"context": context, "persona": persona})


def first_line(text: str) -> str | None:
    """A generated post: its first non-empty line; None when the model wrote nothing."""
    for line in text.strip().splitlines():
        if line.strip():
            return line.strip()
    return None


def meanfield_prompt(*, topic: str, previous: str | None, actions: Sequence[PastAction],
                     label_space: Mapping[str, Sequence[str]]) -> str:
    """The text mean field's update prompt: previous summary and the round's actions, in agent
    order, from the one mean-field template (shared by simulation and training)."""
    lines = "\n".join(_describe(a, list(label_space)) for a in actions) or "- none"
    return "".join(render_parts("meanfield", {"topic": topic},
                                {"previous": previous or NO_REACTIONS, "actions": lines}))


def clean_summary(text: str, max_chars: int = 400) -> str | None:
    """A generated summary: its first paragraph, bounded; None when nothing usable came."""
    first = text.strip().split("\n\n")[0].strip()
    return first[:max_chars] or None


def choice_distribution(log_scores: np.ndarray) -> np.ndarray:
    """Rows of option log-scores -> probability rows (a stable softmax)."""
    z = np.asarray(log_scores, dtype=float)
    z = z - z.max(axis=1, keepdims=True)
    p = np.exp(z)
    return p / p.sum(axis=1, keepdims=True)


CALIBRATION_STEPS = 1000  # at most; each multiplies every option's weight by target / mean
CALIBRATION_TOL = 1e-10  # stop once no option's log-ratio exceeds this


def calibrate(log_scores: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Rows of option log-scores shifted by one offset per option (the same for every row), so
    that the rows' mean probability is ``target``: the population's mix follows the mean
    field's forecast while each agent keeps the model's odds against the others (``mf-cal``).
    Found by iterative proportional fitting; the rows are taken in the order given, so the
    result is the same wherever they were scored."""
    z = np.asarray(log_scores, dtype=float)
    # an option a row rules out (-inf) keeps a trace, so that a target can still reach it
    z = np.maximum(z - z.max(axis=1, keepdims=True), -50.0)
    log_t = np.log(np.asarray(target, dtype=float))
    offset = np.zeros(z.shape[1])
    for _ in range(CALIBRATION_STEPS):
        step = log_t - np.log(choice_distribution(z + offset).mean(axis=0))
        offset += step
        if np.abs(step).max() < CALIBRATION_TOL:
            break
    return z + offset
