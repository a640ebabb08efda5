"""The round loop in one process, for policies that need no language model.

It runs the statistical references (``base-rate``, ``persistence``) on any dataset and the
synthetic world's built-in policies (``oracle``, ``surrogate-mf``, ``surrogate-state``) on a
synthetic dataset, through the same schedule, mean field, seeding and store as the Ray engine,
so that data → store → evaluate can be exercised without a model.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from mfray.config import LLM_VARIANTS, SURROGATE_VARIANTS, RunConfig, from_dict
from mfray.data.schema import Dataset
from mfray.data.synthetic import SyntheticWorld
from mfray.errors import ConfigError, StoreError
from mfray.meanfield import NumericMeanField
from mfray.persona import persona_for
from mfray.references import base_rate, fit_persistence_weight, persistence
from mfray.schedule import (
    Unit,
    agent_uniform,
    build_units,
    is_warmup,
    n_rounds,
    round_slice,
    sample_index,
)
from mfray.store import RunStore

#: probabilities per dimension for the agents of one round: dim -> (n_agents, n_options)
Policy = Callable[[Unit, range, NumericMeanField], dict[str, np.ndarray]]
SURROGATE_SMOOTH = 0.02


@dataclass(frozen=True)
class SimSpec:
    sim_id: int
    unit: Unit
    variant: str
    seed: int


def label_indices(ds: Dataset, unit_agents: Any, dim: str) -> np.ndarray:
    """Real label indices of agents in arrival order (-1 where unlabelled)."""
    options = ds.label_space[dim]
    return np.array([options.index(lab[dim]) if lab[dim] is not None else -1
                     for lab in unit_agents["labels"].to_pylist()], dtype=int)


def make_policy(variant: str, unit: Unit, ds: Dataset, cfg: RunConfig,
                replies_by_event: dict[str, Any]) -> Policy:
    """Build the model-free policy of one variant for one simulation unit."""
    space = ds.label_space
    if variant in LLM_VARIANTS:
        raise ConfigError(f"variant {variant!r} needs the LLM engine, which is not built yet; "
                          "model-free variants: base-rate, persistence"
                          + (", " + ", ".join(SURROGATE_VARIANTS) if ds.name == "synthetic"
                             else ""))
    if variant in SURROGATE_VARIANTS:
        return _surrogate(variant, ds)
    train = cfg.sim.train_events or tuple(e for e in replies_by_event if e != unit.event_id)
    fixed: dict[str, np.ndarray] = {}
    for dim, options in space.items():
        train_labels = [label_indices(ds, replies_by_event[e], dim) for e in train]
        base = base_rate(train_labels, len(options))
        if variant == "base-rate":
            fixed[dim] = base
        else:
            weight = fit_persistence_weight(train_labels, cfg.sim.warmup, len(options))
            warm = label_indices(ds, unit.agents, dim)[: cfg.sim.warmup]
            fixed[dim] = persistence(warm, base, weight)

    def reference(unit: Unit, agents: range, mf: NumericMeanField) -> dict[str, np.ndarray]:
        return {dim: np.tile(p, (len(agents), 1)) for dim, p in fixed.items()}

    return reference


def _surrogate(variant: str, ds: Dataset) -> Policy:
    try:
        world = SyntheticWorld.from_dataset(ds)
    except ValueError:
        raise ConfigError(f"variant {variant!r} exists only on a synthetic-world dataset "
                          f"(this one is {ds.name!r})") from None

    def policy(unit: Unit, agents: range, mf: NumericMeanField) -> dict[str, np.ndarray]:
        profiles = unit.agents["profile"].to_pylist()
        x = np.stack([world.features(profiles[i]) for i in agents])
        if variant == "oracle":  # the world's truth, given the simulated mean field
            return {"stance": world.probs(unit.event_id, x, mf.shares("stance"))}
        q = world.persona_probs(x)
        if variant == "surrogate-state" or mf.n("stance") == 0:
            return {"stance": q}
        # reweight the persona model so that the round's population matches the mean field
        ratio = (mf.shares("stance") + SURROGATE_SMOOTH) / (q.mean(axis=0) + SURROGATE_SMOOTH)
        p = q * ratio
        return {"stance": p / p.sum(axis=1, keepdims=True)}

    return policy


def plan(cfg: RunConfig, ds: Dataset) -> list[SimSpec]:
    """Simulations of a run: units × seeds × variants, in a stable order."""
    units = build_units(ds, cfg.sim)
    specs = []
    for unit in units:
        for seed in cfg.sim.seeds:
            for variant in cfg.sim.variants:
                specs.append(SimSpec(len(specs), unit, variant, seed))
    return specs


def run_local(cfg: RunConfig, ds: Dataset, run_dir: str | Path, *, resume: bool = False,
              progress: bool = True) -> RunStore:
    """Run every simulation of ``cfg`` round by round and write each round to the store."""
    specs = plan(cfg, ds)
    every_event = replace(cfg.sim, unit="event", events=(), min_replies=0, train_events=())
    replies_by_event = {u.event_id: u.agents for u in build_units(ds, every_event)}
    agent_rows = {s.unit.key(): s.unit.agents.to_pylist() for s in specs}
    policies = {s.sim_id: make_policy(s.variant, s.unit, ds, cfg, replies_by_event)
                for s in specs}
    mfs = {s.sim_id: NumericMeanField.empty(ds.label_space) for s in specs}
    if resume:
        store = RunStore.open(run_dir)
        if from_dict(RunConfig, store.config()) != cfg:
            raise StoreError(f"{run_dir}: the stored config differs from this one; resume "
                             "with the same config (see config.json in the run directory)")
        store.discard_incomplete()
        start = _replay(store, ds, mfs)
    else:
        store = RunStore.create(run_dir, run_id=uuid.uuid4().hex[:12], config=cfg.to_dict(),
                                label_space=ds.label_space, model_id="none",
                                n_simulations=len(specs))
        start = 0
    total = max(n_rounds(s.unit.n_agents, cfg.sim.round_size) for s in specs)
    run_id = store.run_info()["run_id"]
    for r in tqdm(range(start, total), desc="rounds", disable=not progress, initial=start,
                  total=total):
        decisions, rounds = [], []
        for spec in specs:
            agents = round_slice(r, cfg.sim.round_size, spec.unit.n_agents)
            if len(agents) == 0:
                continue
            d, row, mfs[spec.sim_id] = _step(spec, agents, r, mfs[spec.sim_id],
                                             policies[spec.sim_id], agent_rows[spec.unit.key()],
                                             ds, cfg, run_id)
            decisions.extend(d)
            rounds.append(row)
        store.write_round(r, decisions, rounds)
    store.mark("complete")
    return store


def _replay(store: RunStore, ds: Dataset, mfs: dict[int, NumericMeanField]) -> int:
    """Rebuild every simulation's mean field from the stored decisions; return the next round."""
    done = store.completed_rounds()
    if not done:
        return 0
    table = store.read_decisions(columns=["sim_id", "round", "agent_index", "action"])
    rows = sorted(table.to_pylist(), key=lambda d: (d["round"], d["sim_id"], d["agent_index"]))
    by_round: dict[tuple[int, int], list[dict[str, Any]]] = {}
    for d in rows:
        by_round.setdefault((d["sim_id"], d["round"]), []).append(d)
    for (sim_id, _), group in sorted(by_round.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        labels = {dim: [g["action"][dim] for g in group] for dim in ds.label_space}
        mfs[sim_id] = mfs[sim_id].update(ds.label_space, labels)
    return max(done) + 1


def _step(spec: SimSpec, agents: range, r: int, mf: NumericMeanField, policy: Policy,
          agent_rows: list[dict[str, Any]], ds: Dataset, cfg: RunConfig, run_id: str,
          ) -> tuple[list[dict[str, Any]], dict[str, Any], NumericMeanField]:
    """One round of one simulation: decide, sample, record, update the mean field."""
    space, unit, w = ds.label_space, spec.unit, cfg.sim.warmup
    t0 = time.perf_counter()
    rollout = [i for i in agents if not is_warmup(i, w)]
    probs = policy(unit, range(rollout[0], rollout[-1] + 1), mf) if rollout else {}
    t_policy = time.perf_counter() - t0
    rows = []
    for i in agents:
        warm = is_warmup(i, w)
        post = agent_rows[i]
        real = post["labels"]
        if warm:  # warm-up agents act with their real actions
            action, p_row, text = dict(real), None, post["text"]
        else:
            u = agent_uniform(spec.seed, unit.key(), i)
            p_row = {dim: probs[dim][i - rollout[0]].tolist() for dim in space}
            action = {dim: space[dim][sample_index(np.asarray(p_row[dim]), u)] for dim in space}
            text = None
        nll = None
        if p_row is not None:
            known = [-np.log(max(p_row[d][space[d].index(real[d])], 1e-12))
                     for d in space if real[d] is not None]
            nll = float(sum(known)) if known else None
        rows.append({
            "run_id": run_id, "sim_id": spec.sim_id, "event_id": unit.event_id,
            "variant": spec.variant, "seed": spec.seed, "round": r, "agent_index": i,
            "post_id": post["post_id"], "user_id": post["user_id"],
            "thread_id": post["thread_id"], "context_post_id": post["context_post_id"],
            "persona": persona_for(unit.source, post["profile"]), "is_warmup": warm,
            "meanfield_id": f"{spec.sim_id}:{r - 1}" if r else f"{spec.sim_id}:init",
            "template_hash": None, "action_text": text, "action": action, "probs": p_row,
            "real_text": post["text"], "real": real, "nll": nll, "ok": True, "error": None,
            "latency_s": t_policy / len(agents), "tokens_in": 0, "tokens_out": 0,
        })
    t1 = time.perf_counter()
    labels = {dim: [row["action"][dim] for row in rows] for dim in space}
    new_mf = mf.update(space, labels)
    round_counts = NumericMeanField.empty(space).update(space, labels)
    row = {
        "run_id": run_id, "sim_id": spec.sim_id, "event_id": unit.event_id,
        "variant": spec.variant, "seed": spec.seed, "round": r,
        "meanfield_id": f"{spec.sim_id}:{r}", "meanfield_text": new_mf.render(space),
        "meanfield_shares": {d: new_mf.shares(d).tolist() for d in space},
        "counts": {d: list(round_counts.counts[d]) for d in space},
        "n_agents": len(agents), "n_warmup": sum(is_warmup(i, w) for i in agents),
        "n_failed": 0, "t_policy_s": t_policy, "t_meanfield_s": time.perf_counter() - t1,
        "t_total_s": time.perf_counter() - t0,
    }
    return rows, row, new_mf
