"""Which simulations a run has, and which shard owns which of their agents.

A run's simulations are units × seeds × variants × (an untouched twin + each intervention), in
a stable order (:func:`plan`). Agent ``i`` of every simulation lives on shard ``i mod S``
(:func:`shard_sims`), which also fits the references and the ``bayes`` latent once per unit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from mfray.baselines import UnitFit, bayes_latent, fit_reference, labels_of_events, load_world
from mfray.config import RunConfig
from mfray.data.schema import Dataset
from mfray.data.synthetic import SyntheticWorld
from mfray.engine.population import SimMeta
from mfray.engine.shard import ShardSim
from mfray.errors import ConfigError
from mfray.interventions import Intervention
from mfray.persona import persona_for
from mfray.schedule import Unit, build_units, n_rounds
from mfray.variants import twin_label, variant

#: agent columns a shard keeps: ShardSim field name -> column of the unit's agents
_SHARD_COLUMNS = ("post_id", "user_id", "thread_id", "context_post_id", "context_text",
                  "real_text", "real", "persona")


@dataclass(frozen=True)
class SimSpec:
    """One simulation of a run."""

    sim_id: int
    unit: Unit
    variant: str
    seed: int
    intervention: Intervention | None = None

    @property
    def label(self) -> str:
        """The name stored in the ``variant`` column: ``mf`` or ``mf+<intervention>``."""
        return twin_label(self.variant, None if self.intervention is None
                          else self.intervention.name)


def plan(cfg: RunConfig, ds: Dataset) -> list[SimSpec]:
    """Simulations of a run: units × seeds × variants × (untouched twin + each intervention),
    in a stable order."""
    for iv in cfg.sim.interventions:
        iv.check(ds.label_space)
    distilled = [v for v in cfg.sim.variants if variant(v).needs_distilled]
    if distilled and (not cfg.policy.distilled or cfg.policy.mode != "choice"):
        raise ConfigError(f"variant {distilled[0]!r} decides with a distilled policy: name its "
                          "directory (mfray distill) in policy.distilled, in policy.mode = "
                          "choice")
    calibrated = [v for v in cfg.sim.variants if variant(v).calibrated]
    if calibrated and cfg.policy.mode != "choice":
        raise ConfigError(f"variant {calibrated[0]!r} calibrates the option probabilities of "
                          "choice mode; text mode has none (use policy.mode = choice)")
    units = build_units(ds, cfg.sim)
    last = max(n_rounds(u.n_agents, cfg.sim.round_size) for u in units) - 1
    late = [iv.name for iv in cfg.sim.interventions if iv.round >= last]
    if late:
        raise ConfigError(f"intervention(s) {late} act after a round >= {last}, the last "
                          "round of the longest unit: no decision would follow them")
    specs: list[SimSpec] = []
    for unit in units:
        for seed in cfg.sim.seeds:
            for name in cfg.sim.variants:
                for iv in (None, *cfg.sim.interventions):
                    specs.append(SimSpec(len(specs), unit, name, seed, iv))
    return specs


#: memory a run holds per agent of each simulation (the population's state, a round's
#: requests and decisions, the shards' references to the agent's columns, the inputs in Ray's
#: object store), per distinct agent (its columns: persona, texts, ids, held once whatever the
#: seeds and variants), and besides them (Ray, the processes). Measured with the scripted
#: model (results/faults.md): the dev data's 9,418 agent-simulations per seed peaked at 787,
#: 1,128 and 2,071 MiB for 10, 100 and 400 seeds (350-420 bytes each); synthetic worlds of
#: 20,000, 80,000 and 320,000 distinct agents at 803, 1,013 and 1,823 MiB (3.5 kB each)
BYTES_PER_AGENT = 500
BYTES_PER_DISTINCT_AGENT = 3_500
BASE_BYTES = 768 << 20


def memory_estimate(specs: list[SimSpec]) -> int:
    """Bytes a run of ``specs`` needs at its peak (the model's own memory not counted)."""
    distinct = {s.unit.key(): s.unit.n_agents for s in specs}
    return (BASE_BYTES + BYTES_PER_AGENT * sum(s.unit.n_agents for s in specs)
            + BYTES_PER_DISTINCT_AGENT * sum(distinct.values()))


def check_memory(waves: list[Wave], free: int) -> None:
    """Refuse, before anything starts, a run whose largest wave would need more than ``free``
    bytes."""
    specs = max((w.specs for w in waves), key=memory_estimate)
    need = memory_estimate(specs)
    if need > free:
        agents = sum(s.unit.n_agents for s in specs)
        lower = ("Lower resources.wave_agents, or run" if len(specs) > 1 else
                 "Run a smaller unit (sim.unit = thread), or")
        raise ConfigError(
            f"{len(specs):,} simulations of {agents:,} agents held at once need about "
            f"{need / 2**30:.1f} GiB of memory; {free / 2**30:.1f} GiB is free here. {lower} "
            "on a cluster (resources.address)")


@dataclass(frozen=True)
class Wave:
    """Simulations that run together, round by round; a run's waves run one after another,
    its steps (the store's rounds) numbered on from one wave to the next."""

    index: int
    specs: list[SimSpec]
    first_step: int
    rounds: int

    @property
    def steps(self) -> range:
        return range(self.first_step, self.first_step + self.rounds)


def waves(specs: list[SimSpec], wave_agents: int, round_size: int) -> list[Wave]:
    """The run's simulations in waves of at most ``wave_agents`` agents (a simulation larger
    than that is a wave of its own), in plan order: a run that fits is one wave. Simulations
    are independent, so a simulation's decisions are the same in any wave (bit for bit, but
    for an LLM's last bits in other batches)."""
    groups: list[list[SimSpec]] = []
    held = 0
    for spec in specs:
        if not groups or held + spec.unit.n_agents > wave_agents:
            groups.append([])
            held = 0
        groups[-1].append(spec)
        held += spec.unit.n_agents
    out, step = [], 0
    for i, group in enumerate(groups):
        rounds = max(n_rounds(s.unit.n_agents, round_size) for s in group)
        out.append(Wave(i, group, step, rounds))
        step += rounds
    return out


def shard_sims(specs: list[SimSpec], ds: Dataset, cfg: RunConfig, n_shards: int
               ) -> tuple[list[list[ShardSim]], list[SimMeta], SyntheticWorld | None,
                          list[dict[str, Any]]]:
    """Split every simulation's agents over the shards (agent i goes to shard i mod S); also
    every simulation's metadata, the synthetic world where a variant needs it, and the
    references' fits, one row per unit, reference variant and dimension (the store's
    ``references.parquet``)."""
    traits = {s.variant: variant(s.variant) for s in specs}
    labels_by_event: dict[str, list[Any]] = {}
    if any(t.needs_fit for t in traits.values()):
        labels_by_event = labels_of_events(ds, cfg.sim)
    worldly = [name for name, t in traits.items() if t.needs_world]
    world = load_world(worldly[0], ds) if worldly else None
    shards: list[list[ShardSim]] = [[] for _ in range(n_shards)]
    metas = []
    key, col, followers = None, {}, ()
    priors: dict[tuple[str, ...], dict[str, float]] = {}  # crowd's fits by training set
    fitted: dict[tuple[str, str], UnitFit] = {}  # by unit, variant
    latents: dict[str, np.ndarray] = {}  # bayes: the event latent's posterior, by unit
    for spec in specs:  # unit-major order: one unit's columns are alive at a time
        unit, t = spec.unit, traits[spec.variant]
        if unit.key() != key:
            key, col = unit.key(), _columns(unit)
            followers = tuple((p or {}).get("followers_count") for p in col["profile"])
        metas.append(SimMeta(spec.sim_id, unit.event_id, spec.variant, spec.seed, followers,
                             spec.label, spec.intervention, unit.topic))
        fit = None
        if t.needs_fit:  # fitted once per unit, whatever the seeds
            ref = (unit.key(), spec.variant)
            if ref not in fitted:
                fitted[ref] = fit_reference(spec.variant, unit, col["labels"], labels_by_event,
                                            ds.label_space, cfg.sim, priors)
            fit = fitted[ref]
        feats = np.stack([world.features(p) for p in col["profile"]]) if t.needs_world else None
        latent = None
        if t.needs_event_units:  # the latent, inferred once per unit from its warm-up only
            if unit.key() not in latents:
                latents[unit.key()] = bayes_latent(world, cfg.sim.warmup, feats, col["labels"])
            latent = latents[unit.key()]
        for k in range(n_shards):
            idx = list(range(k, unit.n_agents, n_shards))  # agents i ≡ k (mod S)
            if not idx:
                continue
            part = {name: tuple(col[name][i] for i in idx) for name in _SHARD_COLUMNS}
            shards[k].append(ShardSim(
                spec.sim_id, unit.event_id, unit.key(), spec.variant, spec.seed, unit.topic,
                tuple(idx), **part, features=None if feats is None else feats[idx],
                latent=latent, label=spec.label, fixed=fit.fixed if fit else None,
                crowd_prior=fit.crowd_prior if fit else None,
                like_training=fit.like if fit else None))
    return shards, metas, world, [row for fit in fitted.values() for row in fit.rows]


def _columns(unit: Unit) -> dict[str, list[Any]]:
    """The unit's agent columns, with each agent's persona, context text and real action; equal
    personas, texts and labels are one object each (a large synthetic world has few distinct
    ones, and the shards, the object store and the driver each hold them)."""
    col = unit.agents.to_pydict()
    col["persona"] = _one_each([persona_for(unit.source, p) for p in col["profile"]])
    col["context_text"] = [unit.contexts.get(c or "", "") for c in col["context_post_id"]]
    col["real_text"] = _one_each(col["text"])
    col["real"] = _one_each(col["labels"], key=lambda d: d and tuple(d.items()))
    return col


def _one_each(values: list[Any], key: Any = None) -> list[Any]:
    """``values`` with equal ones the same object (never changed: the shards copy a label dict
    before they change it)."""
    seen: dict[Any, Any] = {}
    return [seen.setdefault(v if key is None else key(v), v) for v in values]
