"""Resampled events: the same real replies, in other label mixes.

Real events often share one base rate (on RumourEval every event is about two-thirds
``comment``), and an event's topic names it. A policy tuned on them lowers its loss most
cheaply by learning each topic's label mix, not by reading the mean field: ``mfray probe``
measures this (tuned sensitivity about +0.01). method.md §5 warns against exactly that.

:func:`mix_events` makes the mean field the only way to the label mix. Each copy of an event
draws a target mix ``p ~ Dirichlet(alpha)`` over the options of one dimension and keeps, of
each option ``l``, ``round(N·p_l)`` of the event's real replies labelled ``l`` (drawn without
replacement, original arrival order kept), with ``N`` as large as the event's counts allow.
With ``top_up``, a copy that would fall short of ``min_agents`` is not redrawn: it keeps every
reply of an option that runs short and draws that option's missing ones again from them (new
post ids ``id~k``, each at the time of a reply drawn at random: repeats at their original's
time would clump), so every drawn mix is used and a small event gives its copies too.
Texts, personas, contexts and the time order are real; only who is in the population changes.
A copy's topic is its event's, so the topic no longer tells the mix: the numeric mean field,
built from the copy's own earlier replies by the simulator's code, does.

Two uses: training on copies of the training events (``train.mix_copies``), and evaluating on
copies of a held-out event (``mfray data mix``): events whose base rates differ from the
training events', as method.md §5 says unseen events do. Copies are evaluation events:
training and the references read none unless told to (``sim.events``, ``sim.train_events``),
and a copy ``E~mixK`` is event ``E`` for every leave-one-out rule (:func:`source_event`):
holding out ``E`` holds out its copies.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mfray.data.schema import Dataset
from mfray.errors import ConfigError

SEPARATOR = "~mix"
Centre = Literal["uniform", "base-rate"]
CENTRES: tuple[Centre, ...] = ("uniform", "base-rate")
MAX_DRAWS = 100  # redraws of a mix whose feasible size is below min_agents


def source_event(event_id: str) -> str:
    """The real event a copy was drawn from (``E~mix3`` -> ``E``); other ids are their own."""
    return event_id.split(SEPARATOR, 1)[0]


def copy_sizes(counts: np.ndarray, mix: np.ndarray, least: int = 0) -> np.ndarray:
    """Replies kept per option: the largest population with shares ``mix`` that the counts
    allow (rounded per option, never more than there are); with ``least``, a population of at
    least ``least`` in those shares where the counts allow fewer (an option may then need
    more replies than it has)."""
    live = mix > 0
    n = float(np.min(counts[live] / mix[live])) if live.any() else 0.0
    sizes = np.minimum(np.round(n * mix).astype(int), counts)
    if sizes.sum() >= least:
        return sizes
    return np.maximum(np.ceil(least * mix).astype(int), sizes)


def mix_events(ds: Dataset, events: Sequence[str], copies: int, *, alpha: float = 1.0,
               seed: int = 0, dimension: str | None = None, min_agents: int = 64,
               centre: Centre = "uniform", top_up: bool = False) -> tuple[Dataset, list[str]]:
    """``ds`` plus ``copies`` resampled copies of each of ``events``; returns the dataset and
    the ids of the copies (``event~mixK``, ``K`` from the first name the dataset does not
    have yet). Copies smaller than ``min_agents`` replies are redrawn (up to ``MAX_DRAWS``
    times, then left out); with ``top_up`` they are filled up to ``min_agents`` instead, by
    drawing short options' replies again (module docstring), and every draw is kept: the
    mixes are then exactly the Dirichlet's, over the options the event has replies of.

    The mixes are drawn from ``Dirichlet(alpha · K · c)`` over the ``K`` options: ``centre``
    ``"uniform"`` (``c = 1/K``: ``Dirichlet(alpha)``, any mix) or ``"base-rate"`` (``c`` the
    pooled reply mix of ``events``, Laplace-smoothed), so that copies scatter around the
    events' own base rate and a policy trained on them learns that as its prior mean."""
    if copies < 0 or alpha <= 0 or min_agents < 1 or centre not in CENTRES:
        raise ConfigError(f"need copies >= 0, alpha > 0, min_agents >= 1 and a centre in "
                          f"{CENTRES}")
    dim = dimension or next(iter(ds.label_space))
    if dim not in ds.label_space:
        raise ConfigError(f"unknown dimension {dim!r}; the data has {list(ds.label_space)}")
    options = list(ds.label_space[dim])
    known = set(ds.event_ids())
    unknown = [e for e in events if e not in known]
    if unknown:
        raise ConfigError(f"unknown event(s) {unknown}; the dataset has {sorted(known)}")
    rng = np.random.default_rng(seed)
    concentration = np.full(len(options), alpha)
    if centre == "base-rate":
        pooled = sum(reply_mix(ds, e, dim) for e in events) + 1.0
        concentration = alpha * len(options) * pooled / pooled.sum()
    new_events, new_posts, ids = [], [], []
    for event in events:
        posts = ds.posts_of(event)
        sources, by_option = _replies_by_option(posts, dim, options)
        counts = np.array([len(b) for b in by_option])
        row = ds.events.filter(pc.equal(ds.events["event_id"], event)).slice(0, 1)
        for _copy in range(copies):
            if top_up:
                sizes = copy_sizes(counts, _draw(rng, concentration, counts > 0), min_agents)
            else:
                for _ in range(MAX_DRAWS):
                    sizes = copy_sizes(counts, rng.dirichlet(concentration))
                    if sizes.sum() >= min_agents:
                        break
                else:
                    continue
            kept = [_take(rng, b, s) for b, s in zip(by_option, sizes, strict=True) if s]
            take = np.sort(np.concatenate([sources, *kept]))
            copy_id = _free_name(event, known)
            known.add(copy_id)
            new_posts.append(_spread_repeats(_renamed(posts.take(pa.array(take)), copy_id),
                                             rng))
            new_events.append(_renamed(row, copy_id))
            ids.append(copy_id)
    if not ids:
        return ds, []
    return replace(ds, events=pa.concat_tables([ds.events, *new_events]),
                   posts=pa.concat_tables([ds.posts, *new_posts])), ids


def _draw(rng: np.random.Generator, concentration: np.ndarray, present: np.ndarray
          ) -> np.ndarray:
    """A Dirichlet mix over the options with replies (the others get none)."""
    mix = np.zeros(len(concentration))
    mix[present] = rng.dirichlet(concentration[present])
    return mix


def _take(rng: np.random.Generator, rows: np.ndarray, size: int) -> np.ndarray:
    """``size`` of ``rows`` without replacement; beyond ``len(rows)``, all of them and the
    rest drawn again from them."""
    if size <= len(rows):
        return rng.choice(rows, size=size, replace=False)
    return np.concatenate([rows, rng.choice(rows, size=size - len(rows), replace=True)])


def _spread_repeats(posts: pa.Table, rng: np.random.Generator) -> pa.Table:
    """A topped-up copy's repeated replies: ids ``id~1``, ``id~2``, … after the first, and each
    at the time of a reply of the copy drawn at random, so that the repeats of a short
    option's few replies spread over the copy instead of clumping where the originals are
    (a warm-up would then see a lump of them, or none)."""
    ids = posts["post_id"].to_pylist()
    if len(set(ids)) == len(ids):
        return posts
    seen: dict[str, int] = {}
    renamed, repeats = [], []
    for row, i in enumerate(ids):
        k = seen.get(i, 0)
        seen[i] = k + 1
        renamed.append(f"{i}~{k}" if k else i)
        if k:
            repeats.append(row)
    replies = np.flatnonzero(pc.is_valid(posts["parent_id"]).to_numpy(zero_copy_only=False))
    slot = np.arange(posts.num_rows)
    slot[repeats] = rng.choice(replies, size=len(repeats))
    for name, values in (("post_id", pa.array(renamed, pa.string())),
                         ("time", posts["time"].take(pa.array(slot))),
                         ("seconds_since_start", posts["seconds_since_start"].take(
                             pa.array(slot)))):
        k = posts.schema.get_field_index(name)
        posts = posts.set_column(k, posts.schema.field(k), values)
    order = sorted(range(posts.num_rows), key=lambda r: (slot[r], r))  # time order, stable
    return posts.take(pa.array(order))


def _free_name(event: str, known: set[str]) -> str:
    k = 0
    while f"{event}{SEPARATOR}{k}" in known:
        k += 1
    return f"{event}{SEPARATOR}{k}"


def reply_mix(ds: Dataset, event: str, dimension: str) -> np.ndarray:
    """Label counts of ``event``'s replies, in the order of ``dimension``'s options."""
    _, by_option = _replies_by_option(ds.posts_of(event), dimension,
                                      list(ds.label_space[dimension]))
    return np.array([len(b) for b in by_option])


def _replies_by_option(posts: pa.Table, dim: str, options: Sequence[str]
                       ) -> tuple[np.ndarray, list[np.ndarray]]:
    """Row numbers of the source posts, and of the replies labelled each option."""
    labels = np.array(pc.struct_field(posts["labels"], dim).to_pylist(), dtype=object)
    is_reply = pc.is_valid(posts["parent_id"]).to_numpy(zero_copy_only=False)
    return (np.flatnonzero(~is_reply),
            [np.flatnonzero(is_reply & (labels == o)) for o in options])


def _renamed(table: pa.Table, event_id: str) -> pa.Table:
    """``table`` with every row's ``event_id`` set to ``event_id`` (schema kept)."""
    k = table.schema.get_field_index("event_id")
    return table.set_column(k, table.schema.field(k),
                            pa.array([event_id] * table.num_rows, pa.string()))
