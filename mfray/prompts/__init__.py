"""Prompt templates: one file per role, rendered by one function for simulation and training.

A template has a shared part (instructions, topic, population state: byte-identical for every
agent of a simulation's round) and an agent part (context, persona), separated by the marker
``<<<AGENT>>>`` (ending its line). :func:`render_parts` returns both, so an inference engine can reuse the shared
prefix; :func:`render` is their concatenation. Every decision row stores :func:`template_hash`.
"""

from __future__ import annotations

import functools
import hashlib
import string
from collections.abc import Mapping
from pathlib import Path

from mfray.errors import ConfigError

TEMPLATE_DIR = Path(__file__).resolve().parent
AGENT_MARKER = "<<<AGENT>>>\n"  # may follow a placeholder on the same line


@functools.cache
def template(role: str) -> str:
    """The template text of a role (``policy``, ...)."""
    path = TEMPLATE_DIR / f"{role}.txt"
    if not path.is_file():
        known = sorted(p.stem for p in TEMPLATE_DIR.glob("*.txt"))
        raise ConfigError(f"no prompt template for role {role!r}; known: {known}")
    text = path.read_text(encoding="utf-8")
    if text.count(AGENT_MARKER) != 1:
        raise ConfigError(f"{path}: a template holds exactly one line {AGENT_MARKER.strip()}")
    return text


@functools.cache
def system_prompt() -> str:
    """The system message that chat models get before every rendered prompt."""
    return (TEMPLATE_DIR / "system.txt").read_text(encoding="utf-8").strip()


@functools.cache
def template_hash(role: str) -> str:
    """A short stable hash of the template and the system message, stored with every
    decision."""
    return hashlib.sha256((system_prompt() + "\0" + template(role)).encode()).hexdigest()[:16]


@functools.cache
def _placeholders(text: str) -> frozenset[str]:
    return frozenset(f for _, f, _, _ in string.Formatter().parse(text) if f)


@functools.cache
def _parts(role: str) -> tuple[str, str]:
    shared, agent = template(role).split(AGENT_MARKER)
    return shared, agent


def fields(role: str) -> tuple[frozenset[str], frozenset[str]]:
    """The placeholders of the shared part and of the agent part."""
    shared, agent = _parts(role)
    return _placeholders(shared), _placeholders(agent)


def _fill(text: str, values: Mapping[str, str], role: str, part: str) -> str:
    wanted = _placeholders(text)
    if wanted.symmetric_difference(values):
        missing, extra = wanted - set(values), set(values) - wanted
        raise ConfigError(f"template {role!r} ({part} part): missing {sorted(missing)}, "
                          f"unexpected {sorted(extra)}")
    return text.format_map(values)


def render_parts(role: str, shared: Mapping[str, str], agent: Mapping[str, str]
                 ) -> tuple[str, str]:
    """Render a template into its shared prefix and its agent-specific suffix."""
    shared_text, agent_text = _parts(role)
    return (_fill(shared_text, shared, role, "shared"), _fill(agent_text, agent, role, "agent"))


def render(role: str, shared: Mapping[str, str], agent: Mapping[str, str]) -> str:
    """The full prompt: shared prefix followed by the agent part."""
    return "".join(render_parts(role, shared, agent))
