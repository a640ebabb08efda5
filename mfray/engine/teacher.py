"""Teacher forcing: the simulator's rounds replayed with the real actions, training's one door
into the engine.

Every event is one simulation whose agents all act with their real actions (or a rollout's,
``feed``): the same :class:`~mfray.engine.shard.AgentShard` renders the policy prompts and the
same :class:`~mfray.engine.population.Population` keeps the mean field, in process and
without a model. So a prompt rendered here is byte-identical to the prompt the simulator shows
an agent with the same history (``tests/test_train_data.py`` checks it).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace

import pyarrow as pa
from tqdm import tqdm

from mfray.config import RunConfig
from mfray.data.schema import Dataset
from mfray.engine.layout import SimSpec, shard_sims
from mfray.engine.population import Population
from mfray.engine.shard import AgentShard, Requests, ShardSim
from mfray.errors import ConfigError
from mfray.schedule import build_units, n_rounds
from mfray.variants import variant

#: the text mean field's model: (sim id, update prompt) pairs -> sim id -> summary
Summarize = Callable[[list[tuple[int, str]]], Mapping[int, str | None]]
#: (event, agent index) -> (action labels or None for a failed decision, action text): what
#: a simulation's rollout agents did, fed to the mean field in place of the real actions
Feed = Mapping[tuple[str, int], tuple[Mapping[str, str | None] | None, str | None]]


@dataclass(frozen=True)
class SummaryUpdate:
    """One text-mean-field update after a round: its prompt, the summary before, the new one."""

    sim_id: int
    prompt: str
    previous: str | None
    summary: str | None


@dataclass(frozen=True)
class ForcedRound:
    """One teacher-forced round of every simulation."""

    index: int
    sims: Mapping[int, ShardSim]  # every simulation (one per unit), by sim id
    requests: Requests  # the policy prompts of the round's agents, as the simulator renders them
    agents: Mapping[int, range]  # per simulation, the positions of the round's agents
    updates: list[SummaryUpdate]  # text mean field: the updates after the round


def teacher_forced(cfg: RunConfig, ds: Dataset, name: str, *,
                   events: Sequence[str] | None = None, summarize: Summarize | None = None,
                   feed: Feed | None = None, progress: str | None = None
                   ) -> Iterator[ForcedRound]:
    """Replay ``events`` (default: the config's units) in LLM variant ``name``, one seed, no
    warm-up and no intervention, every agent acting with its real action (``feed``'s where it
    has the agent): yields each round after its actions reached the mean field. ``summarize``
    writes the text mean field (``InferenceServer.summarize`` in a simulation); ``progress``
    labels a progress bar (None: none)."""
    if variant(name).kind != "llm":
        raise ConfigError(f"training examples need an LLM variant, not {name!r}")
    if variant(name).keeps_text and summarize is None:
        raise ConfigError(f"{name} examples need a summarize function (the mean-field model)")
    sim_cfg = replace(cfg.sim, variants=(name,), seeds=(0,), interventions=(), warmup=0,
                      events=tuple(events) if events is not None else cfg.sim.events)
    units = build_units(ds, sim_cfg)
    specs = [SimSpec(k, unit, name, 0) for k, unit in enumerate(units)]
    per_shard, metas, _, _ = shard_sims(specs, ds, replace(cfg, sim=sim_cfg), 1)
    shard = AgentShard(per_shard[0], ds.label_space, sim_cfg, "train", mode=cfg.policy.mode)
    population = Population(metas, ds.label_space, sim_cfg)
    sims = {s.sim_id: s for s in per_shard[0]}
    total = max((n_rounds(u.n_agents, sim_cfg.round_size) for u in units), default=0)
    for r in tqdm(range(total), desc=progress, disable=progress is None):
        requests = shard.requests(r, population.publish())
        agents = {s.sim_id: shard.round_agents(s, r) for s in sims.values()}
        tables = [_round_decisions(sims[k], a, ds.label_space, feed)
                  for k, a in agents.items() if len(a)]
        updates: list[SummaryUpdate] = []
        if tables:
            population.update(r, pa.concat_tables(tables))
            if variant(name).keeps_text:
                updates = _summaries(population, summarize)  # type: ignore[arg-type]
        yield ForcedRound(r, sims, requests, agents, updates)


def _summaries(population: Population, summarize: Summarize) -> list[SummaryUpdate]:
    """Rewrite every text mean field after a round, as the driver does."""
    asks = population.meanfield_requests()
    previous = dict(population.summary)
    summaries = dict(summarize(asks)) if asks else {}
    population.set_summaries(summaries)
    return [SummaryUpdate(sim_id, prompt, previous.get(sim_id), summaries.get(sim_id))
            for sim_id, prompt in asks]


def _round_decisions(sim: ShardSim, agents: range, space: Mapping[str, Sequence[str]],
                     feed: Feed | None = None) -> pa.Table:
    """A round of real actions (or the ``feed``'s, where it has the agent), in the columns
    :meth:`Population.update` reads."""
    pos = list(agents)
    acted = [(feed or {}).get((sim.event_id, sim.agent_index[p]),
                              (dict(sim.real[p]), sim.real_text[p])) for p in pos]
    action_type = pa.struct([(d, pa.string()) for d in space])
    return pa.table({
        "sim_id": [sim.sim_id] * len(pos), "agent_index": [sim.agent_index[p] for p in pos],
        "action": pa.array([dict(a) if a is not None else None for a, _ in acted],
                           type=action_type),
        "action_text": [text for _, text in acted], "ok": [a is not None for a, _ in acted],
        "is_warmup": [True] * len(pos)})
