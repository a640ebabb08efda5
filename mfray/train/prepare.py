"""Which examples a training run tunes on, written under ``OUT/examples``: the training events
(the config's units less the held-out ones), resampled copies (``train.mix_copies``), on-policy
examples from earlier rollouts (``train.onpolicy_runs``), the validation split
(``train.val_examples``) and the seeded subsample (``train.max_examples``). The examples
themselves are built by :mod:`mfray.train.data`.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from mfray.config import RunConfig
from mfray.data.mix import mix_events, source_event
from mfray.data.schema import Dataset
from mfray.errors import ConfigError, MfrayError
from mfray.schedule import build_units
from mfray.train.config import TrainConfig
from mfray.train.data import build_examples, rollout_feed, write_examples
from mfray.variants import variant

VAL_FILE = "policy-val.parquet"  # under OUT/examples: train.val_examples


def training_events(cfg: TrainConfig, ds: Dataset) -> list[str]:
    """The events examples come from: the config's units, less the held-out ones. Resampled
    copies (``mfray data mix``) are evaluation events: left out unless ``sim.events`` names
    them, and a copy is its source event here, so holding out either holds out both."""
    known = ds.event_ids()
    missing = [e for e in cfg.train.held_out if e not in known]
    if missing:
        raise ConfigError(f"train.held_out: unknown event(s) {missing}; the dataset has {known}")
    held = {source_event(e) for e in cfg.train.held_out}
    events = [u.event_id for u in build_units(ds, replace(cfg.sim, unit="event"))]
    kept = [e for e in dict.fromkeys(events) if source_event(e) not in held
            and (source_event(e) == e or e in cfg.sim.events)]
    if not kept:
        raise ConfigError("no training events left: check sim.events, sim.min_replies and "
                          "train.held_out")
    return kept


def prepare_examples(cfg: TrainConfig, ds: Dataset, out: Path, kind: str,
                     summarize: Any = None) -> Path:
    """Build, subsample (seeded) and write the examples of ``kind`` (policy | meanfield)."""
    if cfg.train.onpolicy_runs and kind != "policy":
        raise ConfigError("train.onpolicy_runs is for policy examples; mfray train meanfield "
                          "takes none")
    run = RunConfig(sim=cfg.sim, policy=cfg.policy, meanfield=cfg.meanfield)
    if summarize is None and variant(cfg.train.prompt_variant).keeps_text:
        summarize = _summarizer(cfg, ds)
    events = training_events(cfg, ds)
    if cfg.train.mix_copies:
        ds, events = mix_events(ds, events, cfg.train.mix_copies, alpha=cfg.train.mix_alpha,
                                seed=cfg.train.seed,
                                min_agents=max(cfg.sim.min_replies, 4 * cfg.sim.round_size))
        if not events:
            raise MfrayError("train.mix_copies: no training event has enough labelled replies "
                             "for a resampled copy")
    policy, meanfield = build_examples(run, ds, cfg.train.prompt_variant,
                                       events=events, summarize=summarize,
                                       from_agent=cfg.train.from_agent, progress=True)
    if cfg.train.onpolicy_runs:
        policy = pa.concat_tables([policy, *_onpolicy_examples(cfg, run, ds, events,
                                                               summarize)])
    table = policy if kind == "policy" else meanfield
    if table.num_rows == 0:
        raise MfrayError(f"no {kind} examples: the training events have no labelled replies")
    if kind == "policy" and cfg.train.val_examples:
        if table.num_rows < 2:
            raise MfrayError(f"train.val_examples: only {table.num_rows} example(s), none to "
                             "spare")  # at least one example stays for training
        val, table = _draw(table, min(cfg.train.val_examples, table.num_rows - 1),
                           [cfg.train.seed, 1])
        write_examples(val, out / "examples" / VAL_FILE)
    n = cfg.train.max_examples
    if n is not None and n < table.num_rows:
        table, _ = _draw(table, n, cfg.train.seed)
    return write_examples(table, out / "examples" / f"{kind}.parquet")


def _onpolicy_examples(cfg: TrainConfig, run: RunConfig, ds: Dataset, events: list[str],
                       summarize: Any) -> list[pa.Table]:
    """The policy examples of ``train.onpolicy_runs``: each run's rollout agents, shown the
    mean field that run built from its own actions, labelled with their real actions."""
    variant = cfg.train.prompt_variant
    tables = []
    for run_dir in cfg.train.onpolicy_runs:
        feed, ran = rollout_feed(run_dir, variant)
        if ran.get("meanfield_update", "draws") != "draws":
            raise ConfigError(f"train.onpolicy_runs: {run_dir} ran with sim.meanfield_update="
                              f"{ran['meanfield_update']!r}; on-policy examples replay the "
                              "run's drawn actions, so they rebuild a mean field of draws: "
                              "simulate the run with the default 'draws'")
        for key in ("round_size", "unit"):  # the rollout's rounds must be this run's rounds
            if ran[key] != getattr(cfg.sim, key):
                raise ConfigError(f"train.onpolicy_runs: {run_dir} ran with sim.{key}="
                                  f"{ran[key]!r}, this training has {getattr(cfg.sim, key)!r}")
        fed = sorted({event for event, _ in feed})
        outside = [e for e in fed if e not in events]
        if outside:
            raise ConfigError(f"train.onpolicy_runs: {run_dir} simulated {outside}, which are "
                              f"not training events of this run ({', '.join(events)})")
        policy, _ = build_examples(run, ds, variant, events=fed, summarize=summarize,
                                   from_agent=max(ran["warmup"], cfg.train.from_agent), feed=feed,
                                   progress=True)
        print(f"on-policy examples: {policy.num_rows} from {run_dir} ({len(fed)} events)")
        tables.append(policy)
    return tables


def _draw(table: pa.Table, n: int, seed: Any) -> tuple[pa.Table, pa.Table]:
    """``n`` rows of ``table`` drawn by a seeded permutation, and the rest (both in order)."""
    order = np.random.default_rng(seed).permutation(table.num_rows)
    return (table.take(pa.array(np.sort(order[:n]))),
            table.take(pa.array(np.sort(order[n:]))))


def _summarizer(cfg: TrainConfig, ds: Dataset) -> Any:
    """The simulator's text mean field (the current mean-field model, greedy and bounded), so
    the examples carry the summaries a simulation would show."""
    from mfray.engine.inference import InferenceServer

    server = InferenceServer(cfg.policy, ds.label_space, cfg.sim.data,
                             meanfield_adapter=cfg.meanfield.adapter, resources=cfg.resources)
    return lambda requests: server.summarize(requests, cfg.meanfield.max_new_tokens,
                                             cfg.meanfield.repetition_penalty)
