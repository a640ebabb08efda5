"""IB-Tune's training data, built by the simulator's own code with teacher forcing.

Every training event is replayed as one simulation whose agents all act with their real
actions, through the engine's one door for it, :func:`~mfray.engine.teacher.teacher_forced`:
the simulator's own shard renders the policy prompts and its own population keeps the mean
field (numeric, text, recent or popular), reset at every event. So a training prompt is
byte-identical to the prompt the simulator shows an agent with the same history
(``tests/test_train_data.py`` checks it).

- **Policy examples** ``(event, agent, dimension, prompt, options, label)``: what agent ``i``
  saw (topic, context, persona, the population block after agents ``0..`` of earlier rounds)
  and what the real person did. Text mode: the prompt and the real post.
- **On-policy examples** (``feed``, from a simulation of the training events): the same
  agents and real labels, but the mean field is the one the simulation built from its own
  rollout actions. Teacher forcing only ever shows the policy the real history; in a rollout
  the policy's own actions feed the mean field, and a policy that gives the majority a little
  less than the mean field shows drifts away round after round. Examples on the mean fields
  of its own rollouts, labelled with what the real people did, teach it to correct that drift
  (DAgger, Ross et al. 2011; "data as demonstrator", Venkatraman et al. 2015).
- **Mean-field examples** (``mf-text``, ``mf-hybrid``): the update prompt after round ``r``
  (previous summary and round ``r``'s real actions in agent order), the summary the current
  mean-field model wrote (when a ``summarize`` function is given), and the agents of round
  ``r + 1`` with their real actions: the targets of the information-bottleneck reward.

Both are plain Arrow tables, written as Parquet by :func:`write_examples`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mfray.config import RunConfig
from mfray.data.schema import Dataset
from mfray.engine.teacher import Feed, Summarize, teacher_forced
from mfray.errors import ConfigError
from mfray.prompts import template_hash

POLICY_SCHEMA = pa.schema([
    ("event_id", pa.string()), ("variant", pa.string()), ("round", pa.int32()),
    ("agent_index", pa.int32()), ("post_id", pa.string()), ("dimension", pa.string()),
    ("options", pa.list_(pa.string())), ("prompt", pa.string()), ("label", pa.string()),
    ("label_index", pa.int32()), ("real_text", pa.string()), ("mode", pa.string()),
    ("template_hash", pa.string())])

MEANFIELD_SCHEMA = pa.schema([
    ("event_id", pa.string()), ("variant", pa.string()), ("round", pa.int32()),
    ("topic", pa.string()), ("prompt", pa.string()), ("previous", pa.string()),
    ("summary", pa.string()),
    ("next_agents", pa.list_(pa.struct([("agent_index", pa.int32()), ("context", pa.string()),
                                        ("persona", pa.string()), ("labels", pa.string()),
                                        ("text", pa.string())]))),
    ("template_hash", pa.string())])


def rollout_feed(run_dir: str | Path, variant: str) -> tuple[Feed, dict[str, Any]]:
    """What the rollout agents of a complete simulation run did in ``variant`` (one seed per
    event), and the run's ``sim`` section: the ``feed`` of on-policy examples."""
    from mfray.store import RunStore

    store = RunStore.open(run_dir)
    info = store.run_info()
    if info["status"] != "complete":
        raise ConfigError(f"{run_dir}: on-policy examples need a complete run (it is "
                          f"{info['status']}); resume it first")
    rows = store.read_decisions(
        ["event_id", "seed", "agent_index", "action", "action_text", "ok"],
        filter=(pc.field("variant") == variant) & ~pc.field("is_warmup")).to_pylist()
    if not rows:
        found = sorted(set(store.read_decisions(["variant"]).column("variant").to_pylist()))
        raise ConfigError(f"{run_dir}: no rollout decisions of variant {variant!r} "
                          f"(the run has {found})")
    seeds: dict[str, set[int]] = {}
    for r in rows:
        seeds.setdefault(r["event_id"], set()).add(r["seed"])
    several = {e: sorted(s) for e, s in seeds.items() if len(s) > 1}
    if several:
        raise ConfigError(f"{run_dir}: several seeds of one event {several}; on-policy "
                          "examples take one rollout per event (simulate with one seed)")
    feed = {(r["event_id"], r["agent_index"]): (r["action"] if r["ok"] else None,
                                                r["action_text"]) for r in rows}
    return feed, store.config()["sim"]


def build_examples(cfg: RunConfig, ds: Dataset, variant: str, *,
                   events: Sequence[str] | None = None, summarize: Summarize | None = None,
                   from_agent: int = 0, feed: Feed | None = None,
                   progress: bool = False) -> tuple[pa.Table, pa.Table]:
    """Policy and mean-field examples of ``variant`` on ``events`` (default: the config's
    units), agents from ``from_agent`` on (``sim.warmup`` gives the simulator's rollout agents
    only), from the engine's :func:`~mfray.engine.teacher.teacher_forced` rounds. ``summarize``
    writes the text mean field; ``feed`` (see :func:`rollout_feed`) replaces the real actions
    that build the mean field where it has the agent; the labels stay the real ones
    (on-policy examples)."""
    mode, space = cfg.policy.mode, {d: tuple(o) for d, o in ds.label_space.items()}
    dims = list(space)
    p_hash = template_hash("policy" if mode == "choice" else "policy_text")
    policy_rows: list[dict[str, Any]] = []
    mf_rows: list[dict[str, Any]] = []
    pending: dict[int, dict[str, Any]] = {}  # mean-field rows waiting for the next round
    for rnd in teacher_forced(cfg, ds, variant, events=events, summarize=summarize, feed=feed,
                              progress=f"examples {variant}" if progress else None):
        sims, r = rnd.sims, rnd.index
        for (sim_id, i, d), prompt in zip(rnd.requests.keys, rnd.requests.prompts, strict=True):
            sim = sims[sim_id]
            real = sim.real[i]  # one shard: an agent's position is its index
            if i < from_agent or (d >= 0 and real.get(dims[d]) is None):
                continue
            row = {"event_id": sim.event_id, "variant": variant, "round": r, "agent_index": i,
                   "post_id": sim.post_id[i], "prompt": prompt, "real_text": sim.real_text[i],
                   "mode": mode, "template_hash": p_hash, "dimension": None, "options": None,
                   "label": None, "label_index": None}  # text mode: the real post is the target
            if d >= 0:
                dim = dims[d]
                row |= {"dimension": dim, "options": list(space[dim]), "label": real[dim],
                        "label_index": space[dim].index(real[dim])}
            policy_rows.append(row)
        for sim_id, row in pending.items():  # round r's agents are last round's targets
            sim = sims[sim_id]
            row["next_agents"] = [{"agent_index": sim.agent_index[p],
                                   "context": sim.context_text[p], "persona": sim.persona[p],
                                   "labels": json.dumps(dict(sim.real[p])),
                                   "text": sim.real_text[p]} for p in rnd.agents[sim_id]]
            if row["next_agents"]:
                mf_rows.append(row)
        pending = {u.sim_id: {"event_id": sims[u.sim_id].event_id, "variant": variant,
                              "round": r, "topic": sims[u.sim_id].topic, "prompt": u.prompt,
                              "previous": u.previous, "summary": u.summary,
                              "template_hash": template_hash("meanfield")}
                   for u in rnd.updates}
    return (pa.Table.from_pylist(policy_rows, schema=POLICY_SCHEMA),
            pa.Table.from_pylist(mf_rows, schema=MEANFIELD_SCHEMA))


def write_examples(table: pa.Table, path: str | Path) -> Path:
    """Write examples as Parquet, atomically (a temporary file renamed into place)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    pq.write_table(table, tmp)
    tmp.replace(path)
    return path


def read_examples(path: str | Path) -> pa.Table:
    return pq.read_table(path)
