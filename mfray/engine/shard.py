"""The AgentShard actor's class: a slice of the agents of every simulation of a run.

A shard owns, for each simulation, the agents whose index is congruent to its shard index
(columnar: lists per field). Per round it builds the policy prompts of its rollout agents for
the inference actor, then turns the scores into decisions: warm-up agents act with their real
actions, model-free variants compute their probabilities here, and every draw comes from the
agent's own hash-seeded uniform, so decisions never depend on the number of shards.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from mfray.baselines import surrogate_probs
from mfray.config import LLM_VARIANTS, SURROGATE_VARIANTS, SimConfig
from mfray.data.synthetic import SyntheticWorld
from mfray.engine.population import SimView
from mfray.policy import choice_distribution, prompt_parts
from mfray.prompts import template_hash
from mfray.schedule import agent_uniform, is_warmup, sample_index
from mfray.store import decisions_schema

Key = tuple[int, int, int]  # (sim_id, agent_index, dimension index)


@dataclass(frozen=True)
class ShardSim:
    """One simulation's agents held by one shard (agent indices ascending)."""

    sim_id: int
    event_id: str
    unit_key: str
    variant: str
    seed: int
    topic: str
    agent_index: tuple[int, ...]
    post_id: tuple[str, ...]
    user_id: tuple[str | None, ...]
    thread_id: tuple[str, ...]
    context_post_id: tuple[str | None, ...]
    context_text: tuple[str, ...]
    real_text: tuple[str, ...]
    real: tuple[Mapping[str, str | None], ...]
    persona: tuple[str, ...]
    features: np.ndarray | None = None  # synthetic-world persona features (surrogates)
    fixed: Mapping[str, np.ndarray] | None = None  # base-rate / persistence distributions


@dataclass(frozen=True)
class Scored:
    """The inference actor's answer to one shard's requests, aligned with them."""

    log_scores: list[np.ndarray | None]
    errors: list[str | None]
    latency_s: list[float]
    tokens_in: list[int | None]


class AgentShard:
    """Agents of all simulations whose index ≡ shard index (mod number of shards)."""

    def __init__(self, sims: Sequence[ShardSim], label_space: Mapping[str, Sequence[str]],
                 cfg: SimConfig, run_id: str, world: SyntheticWorld | None = None) -> None:
        self.sims = list(sims)
        self.space = {d: tuple(o) for d, o in label_space.items()}
        self.dims = list(self.space)
        self.cfg, self.run_id, self.world = cfg, run_id, world
        self.schema = decisions_schema(self.space)
        self.policy_hash = template_hash("policy")

    def _round_agents(self, sim: ShardSim, round_index: int) -> range:
        """Positions (in the shard's lists) of the simulation's agents in this round."""
        lo, hi = round_index * self.cfg.round_size, (round_index + 1) * self.cfg.round_size
        idx = sim.agent_index
        return range(np.searchsorted(idx, lo), np.searchsorted(idx, hi))

    def requests(self, round_index: int, views: Mapping[int, SimView]
                 ) -> tuple[list[Key], list[str]]:
        """Prompts of this round's rollout agents of LLM variants, one per dimension."""
        keys: list[Key] = []
        prompts: list[str] = []
        for sim in self.sims:
            if sim.variant not in LLM_VARIANTS:
                continue
            view = views[sim.sim_id]
            for pos in self._round_agents(sim, round_index):
                i = sim.agent_index[pos]
                if is_warmup(i, self.cfg.warmup):
                    continue
                for d, dim in enumerate(self.dims):
                    shared, agent = prompt_parts(
                        topic=sim.topic, population=view.population or "",
                        context=sim.context_text[pos], persona=sim.persona[pos],
                        dimension=dim, options=self.space[dim])
                    keys.append((sim.sim_id, i, d))
                    prompts.append(shared + agent)
        return keys, prompts

    def decide(self, round_index: int, views: Mapping[int, SimView],
               requests: tuple[list[Key], list[str]], scored: Scored | None) -> pa.Table:
        """This round's decisions of the shard's agents, as a decisions table."""
        t0 = time.perf_counter()
        answer = {k: j for j, k in enumerate(requests[0])}
        cols: dict[str, list[Any]] = {f.name: [] for f in self.schema}
        for sim in self.sims:
            positions = self._round_agents(sim, round_index)
            if not positions:
                continue
            view = views[sim.sim_id]
            free = self._model_free(sim, positions, view)
            for n, pos in enumerate(positions):
                row = self._decision(sim, pos, view, answer, scored,
                                     None if free is None else {d: p[n] for d, p in free.items()})
                for name, value in row.items():
                    cols[name].append(value)
                cols["round"].append(round_index)
        if not cols["sim_id"]:
            return self.schema.empty_table()
        elapsed = (time.perf_counter() - t0) / len(cols["sim_id"])
        cols["latency_s"] = [lat if lat is not None else elapsed for lat in cols["latency_s"]]
        return pa.Table.from_pydict(cols, schema=self.schema)

    def _model_free(self, sim: ShardSim, positions: range, view: SimView
                    ) -> dict[str, np.ndarray] | None:
        if sim.variant in SURROGATE_VARIANTS:
            x = sim.features[positions.start:positions.stop]
            return {"stance": surrogate_probs(sim.variant, self.world, sim.event_id, x,
                                              view.shares["stance"], view.n_seen["stance"])}
        if sim.fixed is not None:
            return {d: np.tile(p, (len(positions), 1)) for d, p in sim.fixed.items()}
        return None

    def _decision(self, sim: ShardSim, pos: int, view: SimView, answer: Mapping[Key, int],
                  scored: Scored | None, free: Mapping[str, np.ndarray] | None
                  ) -> dict[str, Any]:
        i = sim.agent_index[pos]
        real = dict(sim.real[pos])
        warm = is_warmup(i, self.cfg.warmup)
        llm = sim.variant in LLM_VARIANTS and not warm
        row: dict[str, Any] = {
            "run_id": self.run_id, "sim_id": sim.sim_id, "event_id": sim.event_id,
            "variant": sim.variant, "seed": sim.seed, "agent_index": i,
            "post_id": sim.post_id[pos], "user_id": sim.user_id[pos],
            "thread_id": sim.thread_id[pos], "context_post_id": sim.context_post_id[pos],
            "persona": sim.persona[pos], "is_warmup": warm, "meanfield_id": view.meanfield_id,
            "template_hash": self.policy_hash if llm else None, "action_text": None,
            "action": None, "probs": None, "real_text": sim.real_text[pos], "real": real,
            "nll": None, "ok": True, "error": None, "latency_s": None, "tokens_in": None,
            "tokens_out": None,
        }
        if warm:  # warm-up agents act with their real actions
            row["action"], row["action_text"] = real, sim.real_text[pos]
            return row
        probs: dict[str, np.ndarray] = {}
        if llm:
            js = [answer[(sim.sim_id, i, d)] for d in range(len(self.dims))]
            errors = [scored.errors[j] for j in js if scored.errors[j]]
            row["latency_s"] = sum(scored.latency_s[j] for j in js)
            tokens = [scored.tokens_in[j] for j in js]
            row["tokens_in"] = sum(tokens) if all(t is not None for t in tokens) else None
            if errors:  # a failed model call is a failed decision, never a placeholder
                row["ok"], row["error"] = False, errors[0]
                return row
            probs = {dim: choice_distribution(scored.log_scores[j][None, :])[0]
                     for dim, j in zip(self.dims, js, strict=True)}
        else:
            probs = dict(free)
        row["probs"] = {d: p.tolist() for d, p in probs.items()}
        row["action"] = {dim: self.space[dim][sample_index(
            probs[dim], agent_uniform(sim.seed, sim.unit_key, i, stream=d))]
            for d, dim in enumerate(self.dims)}
        known = [-math.log(max(probs[d][self.space[d].index(real[d])], 1e-12))
                 for d in self.dims if real.get(d) is not None]
        row["nll"] = float(sum(known)) if known else None
        return row
