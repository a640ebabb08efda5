"""The MF-LLM schedule (method.md §1–2): simulation units, rounds of ``B`` agents, warm-up.

Pure functions over the canonical tables; the engine, the training examples
(:mod:`mfray.train`), the probe and the references share them, so all of them see the same
units, rounds and seeded draws.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mfray.config import SimConfig
from mfray.data.schema import Dataset
from mfray.errors import ConfigError


@dataclass(frozen=True)
class Unit:
    """What one simulation covers: an event (all its replies in time order) or one thread.

    ``agents`` are the replies in arrival order, one agent each (the paper's setting); the
    thread source posts are their contexts, not agents.
    """

    event_id: str
    thread_id: str | None
    topic: str
    source: str
    agents: pa.Table
    contexts: dict[str, str]  # context post id -> its text

    @property
    def n_agents(self) -> int:
        return self.agents.num_rows

    def key(self) -> str:
        return self.event_id if self.thread_id is None else f"{self.event_id}/{self.thread_id}"


def n_rounds(n_agents: int, round_size: int) -> int:
    return math.ceil(n_agents / round_size)


def round_slice(round_index: int, round_size: int, n_agents: int) -> range:
    """Agent indices of one round (the last round may be short)."""
    start = round_index * round_size
    return range(start, min(start + round_size, n_agents))


def is_warmup(agent_index: int, warmup: int) -> bool:
    """Warm-up is counted in agents, not rounds: a round may straddle the boundary."""
    return agent_index < warmup


def stable_hash(text: str) -> int:
    """A process-independent 63-bit hash (Python's ``hash`` is salted per process)."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big") >> 1


def agent_uniform(seed: int, unit_key: str, agent_index: int, stream: int = 0) -> float:
    """The uniform draw that decides one agent's action (``stream``: one per action dimension).

    A hash of (seed, unit, agent, stream) only, not of variant, shard or round layout: twin
    simulations (variants, interventions) share their random numbers, and results do not depend
    on sharding. A 53-bit hash fraction costs about a microsecond.
    """
    digest = hashlib.blake2b(f"{seed}|{unit_key}|{agent_index}|{stream}".encode(),
                             digest_size=8).digest()
    return (int.from_bytes(digest, "big") >> 11) / float(1 << 53)


def sample_indices(probs: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Inverse-CDF draws of option indices, one per row of ``probs`` with uniform ``u``."""
    c = np.cumsum(np.atleast_2d(probs), axis=1)
    cdf = c / c[:, -1:]  # not / sum(): the two round differently and could revive a zero option
    idx = (cdf <= np.asarray(u, dtype=float).reshape(-1, 1)).sum(axis=1)
    return np.minimum(idx, c.shape[1] - 1)


def _replies(posts: pa.Table) -> pa.Table:
    """An event's replies (posts with a parent): a slice, not a copy, where they lie together
    after the thread sources (as in a synthetic world of millions of agents)."""
    is_reply = pc.is_valid(posts["parent_id"]).combine_chunks()
    n = pc.sum(is_reply).as_py() or 0
    first = pc.index(is_reply, True).as_py() if n else 0
    if n and pc.all(is_reply.slice(first, n)).as_py():
        return posts.slice(first, n)
    return posts.filter(is_reply)


def build_units(ds: Dataset, cfg: SimConfig) -> list[Unit]:
    """The simulation units of a dataset under a config, in a stable order."""
    known = ds.event_ids()
    missing = [e for e in cfg.events if e not in known]
    if missing:
        raise ConfigError(f"sim.events: unknown event(s) {missing}; the dataset has {known}")
    events = ds.events.to_pylist()
    units: list[Unit] = []
    for event in events:
        if cfg.events and event["event_id"] not in cfg.events:
            continue
        posts = ds.posts_of(event["event_id"])
        replies = _replies(posts)
        if replies.num_rows < max(cfg.min_replies, 1):
            if event["event_id"] in cfg.events:  # named, so left out only with a word
                raise ConfigError(f"sim.events names {event['event_id']}, which has "
                                  f"{replies.num_rows} replies: fewer than "
                                  f"{max(cfg.min_replies, 1)} (sim.min_replies)")
            continue
        # the texts of the posts that are replied to, not of every post (10^7 in large worlds)
        sources = posts.filter(pc.is_in(posts["post_id"], pc.unique(replies["context_post_id"])))
        contexts = dict(zip(sources["post_id"].to_pylist(), sources["text"].to_pylist(),
                            strict=True))
        if cfg.unit == "event":
            units.append(Unit(event["event_id"], None, event["topic"], event["source"],
                              replies, contexts))
            continue
        for thread_id in dict.fromkeys(replies["thread_id"].to_pylist()):
            agents = replies.filter(pc.equal(replies["thread_id"], thread_id))
            units.append(Unit(event["event_id"], thread_id, event["topic"], event["source"],
                              agents, contexts))
    if not units:
        raise ConfigError(f"no simulation unit: no selected event has at least "
                          f"{max(cfg.min_replies, 1)} replies (sim.min_replies)")
    return units
