"""The AgentShard actor's class: a slice of the agents of every simulation of a run.

A shard owns, for each simulation, the agents whose index is congruent to its shard index
(columnar: lists per field). Per round it builds the policy prompts of its rollout agents for
the inference actor, then turns the scores into decisions: warm-up agents act with their real
actions, model-free variants compute their probabilities here, and every draw comes from the
agent's own hash-seeded uniform, so decisions never depend on the number of shards.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from mfray.baselines import surrogate_probs
from mfray.config import SimConfig
from mfray.data.synthetic import SyntheticWorld
from mfray.engine.placement import Placed
from mfray.engine.population import SimView
from mfray.policy import choice_distribution, prompt_parts, text_prompt_parts
from mfray.prompts import template_hash
from mfray.references import crowd_forecast
from mfray.schedule import agent_uniform, is_warmup, round_slice, sample_indices, stable_hash
from mfray.store import decisions_schema
from mfray.variants import variant

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
    latent: np.ndarray | None = None  # bayes: samples of the event latent's posterior
    fixed: Mapping[str, np.ndarray] | None = None  # base-rate / persistence / crowd's base
    crowd_prior: Mapping[str, float] | None = None  # crowd, mf-cal: the prior's weight
    like_training: Mapping[str, float] | None = None  # shift-robust: P(like training events)
    label: str = ""  # the stored variant name (``mf+<intervention>`` for an intervened twin)


@dataclass(frozen=True)
class Scored:
    """The inference actor's answer to one shard's requests, aligned with them."""

    log_scores: list[np.ndarray | None]
    errors: list[str | None]
    latency_s: list[float]
    tokens_in: list[int | None]
    texts: list[str | None] | None = None  # text mode: the generated posts
    labels: list[dict[str, str] | None] | None = None  # text mode: their labels


@dataclass(frozen=True)
class Requests:
    """One shard's model requests of a round. Choice mode: one prompt per agent and dimension;
    text mode: one prompt per agent, with its generation seed and the post it replies to."""

    keys: list[Key]
    prompts: list[str]
    seeds: list[int]
    contexts: list[str]
    #: calibrated variants (``mf-cal``): per simulation, the mix its round's option
    #: probabilities are calibrated to, one array per dimension (the same on every shard)
    targets: dict[int, list[np.ndarray]] = dataclasses.field(default_factory=dict)


def merge(answers: Sequence[Scored], keys: Sequence[Key]) -> Scored:
    """One :class:`Scored` from the answers of ``n`` inference actors, where actor ``a``
    answered the simulations ``sim_id ≡ a (mod n)``."""
    if len(answers) == 1:
        return answers[0]
    n = len(answers)
    owner = [answers[key[0] % n] for key in keys]
    pick: dict[str, Any] = {}
    for f in dataclasses.fields(Scored):
        if not any(getattr(a, f.name) for a in answers):  # e.g. no texts in choice mode
            pick[f.name] = getattr(answers[0], f.name)
        else:
            pick[f.name] = [getattr(o, f.name)[j] for j, o in enumerate(owner)]
    return Scored(**pick)


class AgentShard(Placed):
    """Agents of all simulations whose index ≡ shard index (mod number of shards)."""

    def __init__(self, sims: Sequence[ShardSim], label_space: Mapping[str, Sequence[str]],
                 cfg: SimConfig, run_id: str, world: SyntheticWorld | None = None,
                 mode: str = "choice", distilled: str | None = None) -> None:
        self.sims = list(sims)
        self.space = {d: tuple(o) for d, o in label_space.items()}
        self.dims = list(self.space)
        self.cfg, self.run_id, self.world, self.mode = cfg, run_id, world, mode
        self.schema = decisions_schema(self.space)
        self.policy_hash = template_hash("policy" if mode == "choice" else "policy_text")
        self.distilled = distilled  # mf-distilled's policy (policy.distilled)

    @functools.cached_property
    def _distilled(self) -> Any:
        """The distilled policy, loaded on first use: a few MB, scored in this process."""
        from mfray.llm.distill import load_distilled

        return load_distilled(self.distilled)

    def _prompt(self, sim: ShardSim, view: SimView, pos: int, d: int) -> str:
        """The choice-mode policy prompt of the agent at ``pos`` for dimension ``d``."""
        dim = self.dims[d]
        shared, agent = prompt_parts(topic=sim.topic, population=view.population or "",
                                     context=sim.context_text[pos], persona=sim.persona[pos],
                                     dimension=dim, options=self.space[dim])
        return shared + agent

    def round_agents(self, sim: ShardSim, round_index: int) -> range:
        """Positions (in the shard's lists) of the simulation's agents in this round."""
        agents = round_slice(round_index, self.cfg.round_size, sim.agent_index[-1] + 1)
        idx = sim.agent_index
        return range(np.searchsorted(idx, agents.start), np.searchsorted(idx, agents.stop))

    def requests(self, round_index: int, views: Mapping[int, SimView]) -> Requests:
        """Prompts of this round's rollout agents of LLM variants."""
        out = Requests([], [], [], [])
        for sim in self.sims:
            traits = variant(sim.variant)
            if not traits.needs_model:
                continue
            view = views[sim.sim_id]
            if traits.calibrated and self.round_agents(sim, round_index):
                out.targets[sim.sim_id] = [self._forecast(sim, view, d) for d in self.dims]
            for pos in self.round_agents(sim, round_index):
                i = sim.agent_index[pos]
                if is_warmup(i, self.cfg.warmup):
                    continue
                if self.mode == "text":  # one post per agent, from its own seeded stream
                    shared, agent = text_prompt_parts(
                        topic=sim.topic, population=view.population or "",
                        context=sim.context_text[pos], persona=sim.persona[pos])
                    out.keys.append((sim.sim_id, i, -1))
                    out.prompts.append(shared + agent)
                    out.seeds.append(stable_hash(f"{sim.seed}|{sim.unit_key}|{i}"))
                    out.contexts.append(sim.context_text[pos])
                    continue
                for d in range(len(self.dims)):
                    out.keys.append((sim.sim_id, i, d))
                    out.prompts.append(self._prompt(sim, view, pos, d))
        return out

    def decide(self, round_index: int, views: Mapping[int, SimView],
               requests: Requests, *answers: Scored) -> pa.Table:
        """This round's decisions of the shard's agents, as a decisions table. ``answers``: one
        :class:`Scored` per inference actor (none for a run without a model)."""
        t0 = time.perf_counter()
        scored = merge(answers, requests.keys) if answers else None
        answer = {k: j for j, k in enumerate(requests.keys)}
        cols: dict[str, list[Any]] = {f.name: [] for f in self.schema}
        for sim in self.sims:
            positions = self.round_agents(sim, round_index)
            if positions:
                part = self._sim_decisions(sim, positions, views[sim.sim_id], answer, scored)
                for name, values in part.items():
                    cols[name].extend(values)
        n = len(cols["sim_id"])
        if not n:
            return self.schema.empty_table()
        cols["round"] = [round_index] * n
        cols["run_id"] = [self.run_id] * n
        elapsed = (time.perf_counter() - t0) / n
        cols["latency_s"] = [lat if lat is not None else elapsed for lat in cols["latency_s"]]
        return pa.Table.from_pydict(cols, schema=self.schema)

    def _model_free(self, sim: ShardSim, positions: range, view: SimView
                    ) -> dict[str, np.ndarray] | None:
        if variant(sim.variant).needs_distilled:  # the prompts an LLM's agents get
            return {dim: choice_distribution(self._distilled.score(
                [self._prompt(sim, view, pos, d) for pos in positions], self.space[dim]))
                for d, dim in enumerate(self.dims)}
        if variant(sim.variant).needs_world:
            x = sim.features[positions.start:positions.stop]
            return {"stance": surrogate_probs(sim.variant, self.world, sim.event_id, x,
                                              view.shares["stance"], view.n_seen["stance"],
                                              sim.latent)}
        if sim.crowd_prior is not None:  # one distribution per round, from the mean field
            return {d: np.tile(self._forecast(sim, view, d), (len(positions), 1))
                    for d in sim.fixed}
        if sim.fixed is not None:
            return {d: np.tile(p, (len(positions), 1)) for d, p in sim.fixed.items()}
        return None

    @staticmethod
    def _forecast(sim: ShardSim, view: SimView, dim: str) -> np.ndarray:
        """The shift-robust crowd forecast of this round (``crowd``'s distribution, ``mf-cal``'s
        target)."""
        return crowd_forecast(view.shares[dim], view.n_seen[dim], sim.fixed[dim],
                              sim.crowd_prior[dim], sim.like_training[dim])

    def _llm_probs(self, sim: ShardSim, agents: list[int], rollout: np.ndarray,
                   answer: Mapping[Key, int], scored: Scored, cols: dict[str, list[Any]]
                   ) -> dict[str, np.ndarray]:
        """Probabilities of the rollout agents from the model's scores; failed calls mark
        their decisions ``ok = false`` with the error, never a placeholder action."""
        probs = {dim: np.full((len(agents), len(o)), np.nan) for dim, o in self.space.items()}
        for n in np.flatnonzero(rollout):
            js = [answer[(sim.sim_id, agents[n], d)] for d in range(len(self.dims))]
            cols["latency_s"][n] = sum(scored.latency_s[j] for j in js)
            tokens = [scored.tokens_in[j] for j in js]
            cols["tokens_in"][n] = sum(tokens) if None not in tokens else None
            errors = [scored.errors[j] for j in js if scored.errors[j]]
            if errors:
                cols["ok"][n], cols["error"][n] = False, errors[0]
                continue
            for dim, j in zip(self.dims, js, strict=True):
                probs[dim][n] = scored.log_scores[j]
        for dim in self.dims:
            ok = ~np.isnan(probs[dim][:, 0])
            probs[dim][ok] = choice_distribution(probs[dim][ok]) if ok.any() else probs[dim][ok]
        return probs

    def _sim_decisions(self, sim: ShardSim, positions: range, view: SimView,
                       answer: Mapping[Key, int], scored: Scored | None
                       ) -> dict[str, list[Any]]:
        """Columns of one simulation's decisions in this round (vectorised over its agents)."""
        sl = slice(positions.start, positions.stop)
        agents = list(sim.agent_index[sl])
        n = len(agents)
        warm = np.array([is_warmup(i, self.cfg.warmup) for i in agents])
        llm, prompted = variant(sim.variant).needs_model, variant(sim.variant).reads_prompt
        real = list(sim.real[sl])
        cols: dict[str, list[Any]] = {
            "sim_id": [sim.sim_id] * n, "event_id": [sim.event_id] * n,
            "variant": [sim.label or sim.variant] * n, "seed": [sim.seed] * n,
            "agent_index": agents,
            "post_id": list(sim.post_id[sl]), "user_id": list(sim.user_id[sl]),
            "thread_id": list(sim.thread_id[sl]),
            "context_post_id": list(sim.context_post_id[sl]), "persona": list(sim.persona[sl]),
            "is_warmup": warm.tolist(), "meanfield_id": [view.meanfield_id] * n,
            "template_hash": [None if w or not prompted else self.policy_hash for w in warm],
            # warm-up agents act with their real actions
            "action_text": [t if w else None for t, w in zip(sim.real_text[sl], warm,
                                                              strict=True)],
            "real_text": list(sim.real_text[sl]), "real": real, "ok": [True] * n,
            "error": [None] * n, "latency_s": [None] * n, "tokens_in": [None] * n,
            "tokens_out": [None] * n,
        }
        rollout = ~warm
        if llm and self.mode == "text":
            return self._text_decisions(sim, agents, rollout, answer, scored, cols)
        probs = (self._llm_probs(sim, agents, rollout, answer, scored, cols) if llm
                 else self._model_free(sim, positions, view))
        ok = rollout & np.array(cols["ok"])
        picks, nll = self._sample(sim, agents, ok, probs, real)
        cols["action"] = [dict(real[n]) if warm[n] else picks[n] for n in range(n)]
        cols["probs"] = [{d: probs[d][n].tolist() for d in self.dims} if ok[n] else None
                         for n in range(n)]
        cols["nll"] = nll
        return cols

    def _text_decisions(self, sim: ShardSim, agents: list[int], rollout: np.ndarray,
                        answer: Mapping[Key, int], scored: Scored, cols: dict[str, list[Any]]
                        ) -> dict[str, list[Any]]:
        """Text mode: the generated post and its labels; no action distribution."""
        cols["action"] = [dict(r) for r in cols["real"]]  # warm-up: the real actions
        cols["probs"], cols["nll"] = [None] * len(agents), [None] * len(agents)
        for n in np.flatnonzero(rollout):
            j = answer[(sim.sim_id, agents[n], -1)]
            cols["latency_s"][n], cols["tokens_in"][n] = scored.latency_s[j], scored.tokens_in[j]
            cols["action_text"][n] = scored.texts[j]
            if scored.errors[j]:
                cols["ok"][n], cols["error"][n], cols["action"][n] = False, scored.errors[j], None
            else:
                cols["action"][n] = scored.labels[j]
        return cols

    def _sample(self, sim: ShardSim, agents: list[int], ok: np.ndarray,
                probs: Mapping[str, np.ndarray] | None, real: list[Mapping[str, Any]]
                ) -> tuple[list[dict[str, str] | None], list[float | None]]:
        """Each agent's action per dimension, drawn by inverse CDF from its own uniform."""
        picks: list[dict[str, str] | None] = [None] * len(agents)
        nll: list[float | None] = [None] * len(agents)
        rows = np.flatnonzero(ok)
        if not len(rows):
            return picks, nll
        chosen = {}
        loss = np.zeros(len(rows))
        known = np.zeros(len(rows), dtype=bool)
        for d, dim in enumerate(self.dims):
            p = probs[dim][rows]
            u = np.array([agent_uniform(sim.seed, sim.unit_key, agents[n], stream=d)
                          for n in rows])
            chosen[dim] = sample_indices(p, u)
            target = [self.space[dim].index(real[n][dim]) if real[n].get(dim) is not None
                      else -1 for n in rows]
            has = np.array(target) >= 0
            picked = p[np.arange(len(rows)), np.maximum(target, 0)]
            loss += np.where(has, -np.log(np.maximum(picked, 1e-12)), 0.0)
            known |= has
        for k, n in enumerate(rows):
            picks[n] = {dim: self.space[dim][chosen[dim][k]] for dim in self.dims}
            nll[n] = float(loss[k]) if known[k] else None
        return picks, nll
