"""Evaluate a run against reality: metrics per simulation, per event, per variant; tables; plots.

Only rollout agents count (warm-up agents act with their real actions). Per simulation and
action dimension: KL(real‖sim), JS, TV between the label distributions, DTW between the
per-round share curves, micro/macro F1 of the agents' sampled labels, NLL of the real labels, and
KL per horizon (short/mid/long thirds of the rollout rounds). Seeds of one event are averaged
first, then each variant gets the mean over events with a bootstrap interval (method.md §5).
"""

from __future__ import annotations

import functools
import json
import math
import sys
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from mfray.config import EvalConfig
from mfray.errors import DataError
from mfray.evaluate import metrics as M
from mfray.evaluate import plots
from mfray.store import RunStore
from mfray.variants import twin_label

METRICS = ("kl", "js", "tv", "dtw", "f1_micro", "f1_macro", "nll")
HORIZONS = ("short", "mid", "long")
#: Every column of a simulation's row: the metrics, KL per horizon, and the sampling floor of
#: KL for the event's real replies (:func:`mfray.evaluate.metrics.kl_floor`), which depends on
#: the real rollout replies only, not on the variant.
COLUMNS = (*METRICS, *(f"kl_{h}" for h in HORIZONS), "kl_floor")


#: an intervention of a twin: its name and the round after which it acts
Intervened = tuple[str, int]


@dataclass(frozen=True)
class Evaluation:
    """Per-simulation rows, the per-variant summary, and what the plots draw besides."""

    label_space: dict[str, tuple[str, ...]]
    per_sim: list[dict[str, Any]]
    summary: list[dict[str, Any]]
    #: (variant, dim, event) -> real/sim shares, rounds × options over the event's own rounds,
    #: seeds pooled: events differ in length, so they are never pooled by round
    curves: dict[tuple[str, str, Any], dict[str, np.ndarray]]
    warmup_rounds: float
    #: variant label -> (name, round) of each intervention its simulations had
    interventions: dict[str, tuple[Intervened, ...]]
    cfg: EvalConfig  # the settings the summary's intervals were taken with
    #: label -> (the variant it ran, its twin's intervention or None): see RunRead.origin
    origin: dict[str, tuple[str, Intervened | None]] = field(default_factory=dict)


def _indices(labels: Sequence[dict[str, str | None]], dim: str, options: Sequence[str]
             ) -> np.ndarray:
    return np.array([options.index(lab[dim]) if lab and lab[dim] is not None else M.MISSING
                     for lab in labels], dtype=int)


def sim_metrics(rows: dict[str, list[Any]], dim: str, options: Sequence[str],
                source: str) -> dict[str, float]:
    """Metrics of one simulation's rollout rows (columnar dict) for one dimension."""
    k = len(options)
    real = _indices(rows["real"], dim, options)
    sampled = _indices(rows["action"], dim, options)
    probs = [p[dim] if p else None for p in rows["probs"]]
    has_probs = all(p is not None for p in probs)
    if source == "probs" and not has_probs:
        raise DataError(f"dimension {dim!r}: some decisions carry no probabilities; "
                        "evaluate with --from labels")
    prob_mat = np.array(probs, dtype=float) if has_probs else None
    rounds = np.asarray(rows["round"])
    labelled = real >= 0
    out: dict[str, float] = {m: math.nan for m in COLUMNS}
    out["n_agents"] = float(len(real))
    if not labelled.any():
        return out

    def sim_dist(mask: np.ndarray) -> np.ndarray:
        if source == "probs":
            return M.distribution_from_probs(prob_mat[mask])
        return M.smooth(M.counts(sampled[mask], k))

    real_dist = M.counts(real[labelled], k)
    sim_all = sim_dist(labelled)
    out |= {"kl": M.kl(real_dist, sim_all), "js": M.js(real_dist, sim_all),
            "tv": M.tv(real_dist, sim_all), "kl_floor": M.kl_floor(real_dist)}
    out["f1_micro"], out["f1_macro"] = M.f1_scores(real, sampled, k)
    if prob_mat is not None:
        out["nll"] = M.nll(prob_mat, real)
    real_rounds, real_curve = M.shares_per_round(real, rounds, k)
    sim_curve = np.array([sim_dist(labelled & (rounds == r)) for r in real_rounds])
    out["dtw"] = M.dtw(real_curve, sim_curve)
    for name, sl in M.horizon_slices(len(real_rounds)).items():
        mask = labelled & np.isin(rounds, real_rounds[sl])
        out[f"kl_{name}"] = (M.kl(M.counts(real[mask], k), sim_dist(mask)) if mask.any()
                             else math.nan)
    return out


RunSpec = str | Path | Sequence[str | Path]


def parse_run(spec: str | Path) -> tuple[Path, dict[str, str]]:
    """``DIR`` or ``DIR:old=new[,old=new]``: a run directory and variant renames (so that, e.g.,
    a run with a tuned adapter shows its ``state`` as ``sft`` beside an untuned run)."""
    text = str(spec)
    head, sep, tail = text.rpartition(":")
    if not sep or "=" not in tail or "/" in tail:
        return Path(text), {}
    renames = {}
    for pair in tail.split(","):
        old, eq, new = pair.partition("=")
        if not eq or not old.strip() or not new.strip():
            raise DataError(f"bad rename {pair!r} in {text!r}: use DIR:old=new[,old=new]")
        renames[old.strip()] = new.strip()
    return Path(head), renames


#: the decision columns that :func:`evaluate` and the comparison's forecast read
RUN_COLUMNS = ("sim_id", "event_id", "variant", "seed", "round", "agent_index", "is_warmup",
               "ok", "action", "probs", "real")


@dataclass(frozen=True)
class RunRead:
    """One run, or several read as one (:func:`read_runs`): read once, evaluated many ways."""

    label_space: dict[str, tuple[str, ...]]
    table: pa.Table  # RUN_COLUMNS of every decision, variants renamed, sim ids kept apart
    sim: dict[str, Any]  # the first run's sim config
    name: str  # for messages
    #: each label of the table (renamed where the spec renames it) -> the variant it ran and
    #: its twin's intervention, (name, round) (None for the untouched simulation), from the
    #: runs' configs, so that a label's traits come from the variants table, whatever it is
    #: called
    origin: dict[str, tuple[str, Intervened | None]] = field(default_factory=dict)

    @functools.cached_property
    def columns(self) -> dict[str, list[Any]]:
        """The decisions as Python lists, converted once for every reader of this read."""
        return self.table.to_pydict()


def read_runs(runs: RunSpec | RunRead) -> RunRead:
    """The label space, the decisions (:data:`RUN_COLUMNS`) and the first run's sim config of
    one run or several runs read as one: variants renamed, simulation ids kept apart; the runs
    must share their label space and may not repeat a simulation (variant, event, seed): runs
    of other events (the folds of a leave-one-event-out experiment) or of other seeds (more
    seeds added later) pool into one table. A :class:`RunRead` is returned as it is."""
    if isinstance(runs, RunRead):
        return runs
    specs = [runs] if isinstance(runs, str | Path) else list(runs)
    if not specs:
        raise DataError("no run to read")
    space: dict[str, tuple[str, ...]] | None = None
    tables, seen, cfg_sim, origin = [], set(), {}, {}
    for k, spec in enumerate(specs):
        path, renames = parse_run(spec)
        store = RunStore.open(path)
        info = store.run_info()
        if info["status"] != "complete":  # a run still going, stopped or failed: say so
            print(f"mfray: note: run {path} has status '{info['status']}'; reading its "
                  f"{len(store.completed_rounds())} completed rounds", file=sys.stderr)
        mine = {d: tuple(o) for d, o in json.loads(info["label_space_json"]).items()}
        if space is not None and mine != space:
            raise DataError(f"{path}: another label space than {specs[0]}", file=str(path))
        space = mine
        table = store.read_decisions(columns=list(RUN_COLUMNS))
        final = [renames.get(v, v) for v in set(table["variant"].to_pylist())]
        merged = sorted({name for name in final if final.count(name) > 1})
        if merged:
            raise DataError(f"{spec}: the rename(s) would merge two variants of the run into "
                            f"{merged}; give each its own name", file=str(path))
        variants = [renames.get(v, v) for v in table["variant"].to_pylist()]
        sims = set(zip(variants, table["event_id"].to_pylist(), table["seed"].to_pylist(),
                       strict=True))
        clash = sorted({v for v, _, _ in sims & seen})
        if clash:
            raise DataError(f"{path}: variant(s) {clash} of the same event(s) and seed(s) "
                            "already come from an earlier run; rename them with DIR:old=new",
                            file=str(path))
        seen |= sims
        sim_ids = [k * 10**7 + s for s in table["sim_id"].to_pylist()]
        table = table.set_column(table.schema.get_field_index("variant"), "variant",
                                 pa.array(variants, pa.string()))
        table = table.set_column(table.schema.get_field_index("sim_id"), "sim_id",
                                 pa.array(sim_ids, pa.int64()))
        tables.append(table)
        run_sim = store.config().get("sim", {})
        origin |= {renames.get(label, label): ran for label, ran in _labels(run_sim).items()}
        if k == 0:
            cfg_sim = run_sim
    name = str(specs[0]) if len(specs) == 1 else f"{specs[0]} and {len(specs) - 1} more"
    return RunRead(space or {}, pa.concat_tables(tables), cfg_sim, name, origin)


def _labels(cfg_sim: dict[str, Any]) -> dict[str, tuple[str, Intervened | None]]:
    """The labels a run's simulations carry, each with the variant it ran and its twin's
    intervention as (name, round) (None for the untouched simulation)."""
    ivs = [None, *((iv["name"], int(iv["round"])) for iv in cfg_sim.get("interventions", ()))]
    return {twin_label(v, None if iv is None else iv[0]): (v, iv)
            for v in cfg_sim.get("variants", ()) for iv in ivs}


def evaluate(run_dir: RunSpec | RunRead, cfg: EvalConfig | None = None) -> Evaluation:
    """Compute every metric of a run (or of several runs read as one, :func:`read_runs`)."""
    cfg = cfg or EvalConfig()
    read = read_runs(run_dir)
    space, cfg_sim = read.label_space, read.sim
    if read.table.num_rows == 0:
        raise DataError("the run has no complete round yet", file=read.name)
    data = read.columns
    by_sim: dict[int, list[int]] = {}
    for i, sim in enumerate(data["sim_id"]):
        by_sim.setdefault(sim, []).append(i)
    per_sim = []
    for sim, idx in sorted(by_sim.items()):
        keep = [i for i in idx if not data["is_warmup"][i] and data["ok"][i]]
        head = {k: data[k][idx[0]] for k in ("sim_id", "event_id", "variant", "seed")}
        if not keep:
            continue
        rows = {k: [data[k][i] for i in keep] for k in ("round", "action", "probs", "real")}
        for dim, options in space.items():
            per_sim.append(head | {"dimension": dim}
                           | sim_metrics(rows, dim, options, cfg.source))
    if not per_sim:
        raise DataError("no rollout decision to evaluate (is the warm-up longer than every "
                        "simulation?)", file=read.name)
    warm_rounds = cfg_sim.get("warmup", 0) / max(cfg_sim.get("round_size", 1), 1)
    return Evaluation(space, per_sim, summarise(per_sim, cfg), _curves(data, space, cfg.source),
                      warm_rounds, _interventions(cfg_sim, set(data["variant"])), cfg,
                      read.origin)


def _interventions(cfg_sim: dict[str, Any], present: set[str]
                   ) -> dict[str, tuple[Intervened, ...]]:
    """The config's interventions by the label of the twins present that had them."""
    return {label: (iv,) for label, (_, iv) in _labels(cfg_sim).items()
            if iv is not None and label in present}


def summarise(per_sim: list[dict[str, Any]], cfg: EvalConfig) -> list[dict[str, Any]]:
    """Average seeds within each event, then mean and bootstrap interval over events.

    With a single event there is nothing to resample over events: the interval is then over
    its simulations (seeds), and ``interval_over`` says so."""
    cols = list(COLUMNS)
    groups: dict[tuple[str, str], dict[str, list[dict[str, Any]]]] = {}
    for row in per_sim:
        groups.setdefault((row["variant"], row["dimension"]), {}).setdefault(
            row["event_id"], []).append(row)
    out = []
    for (variant, dim), events in groups.items():
        over = "events" if len(events) > 1 else "seeds"
        entry: dict[str, Any] = {"variant": variant, "dimension": dim, "n_events": len(events),
                                 "n_sims": sum(map(len, events.values())),
                                 "interval_over": over}
        units = list(events.values()) if over == "events" else [[r] for r in
                                                                 next(iter(events.values()))]
        for c in cols:
            per_event = [float(np.nanmean([r.get(c, math.nan) for r in rs]))
                         if any(not math.isnan(r.get(c, math.nan)) for r in rs) else math.nan
                         for rs in units]
            mean, lo, hi = M.bootstrap_ci(per_event, level=cfg.level,
                                          n_resamples=cfg.n_bootstrap, seed=cfg.seed)
            entry[c], entry[f"{c}_lo"], entry[f"{c}_hi"] = mean, lo, hi
        out.append(entry)
    return sorted(out, key=lambda e: (e["dimension"], e["kl"] if not math.isnan(e["kl"])
                                      else math.inf))


def _curves(data: dict[str, list[Any]], space: dict[str, tuple[str, ...]], source: str
            ) -> dict[tuple[str, str, Any], dict[str, np.ndarray]]:
    """Real and simulated shares per round of each event, pooled over its seeds, per variant."""
    by_key: dict[tuple[str, Any], list[int]] = {}
    n_rounds: dict[Any, int] = {}
    for i, (variant, event) in enumerate(zip(data["variant"], data["event_id"], strict=True)):
        n_rounds[event] = max(n_rounds.get(event, 0), data["round"][i] + 1)
        if data["ok"][i]:
            by_key.setdefault((variant, event), []).append(i)
    out = {}
    for (variant, event), idx in sorted(by_key.items(), key=lambda kv: (kv[0][0], str(kv[0][1]))):
        for dim, options in space.items():
            real = np.zeros((n_rounds[event], len(options)))
            sim = np.zeros_like(real)
            for i in idx:
                r = data["round"][i]
                lab = data["real"][i][dim]
                if lab is not None:
                    real[r, options.index(lab)] += 1
                p = data["probs"][i]
                if source == "probs" and p is not None and p[dim] is not None:
                    sim[r] += np.asarray(p[dim]) / np.sum(p[dim])
                elif data["action"][i][dim] is not None:
                    sim[r, options.index(data["action"][i][dim])] += 1
            with np.errstate(invalid="ignore", divide="ignore"):
                out[(variant, dim, event)] = {"real": real / real.sum(axis=1, keepdims=True),
                                              "sim": sim / sim.sum(axis=1, keepdims=True)}
    return out


def markdown_table(summary: list[dict[str, Any]], dim: str) -> str:
    """The summary of one dimension as a Markdown table, mean [95% interval] per metric."""
    cols = list(COLUMNS)
    lines = ["| variant | events | sims | " + " | ".join(cols) + " |",
             "|---|---|---|" + "---|" * len(cols)]
    rows = [e for e in summary if e["dimension"] == dim]
    for e in rows:
        lines.append(f"| {e['variant']} | {e['n_events']} | {e['n_sims']} | "
                     + " | ".join(_interval(e, c) for c in cols) + " |")
    if any(e["interval_over"] == "seeds" for e in rows):
        lines.append("\nOne event: intervals are over its seeds, not over events.")
    return "\n".join(lines)


def event_means(ev: Evaluation, dim: str, column: str, variant: str | None = None
                ) -> dict[Any, float]:
    """The mean of ``column`` per event over its simulations (seeds) of ``dim``, of one
    ``variant`` or of all; NaN rows are left out, and an event without a value is absent."""
    groups: dict[Any, list[float]] = {}
    for r in ev.per_sim:
        if (r["dimension"] == dim and (variant is None or r["variant"] == variant)
                and not math.isnan(r[column])):
            groups.setdefault(r["event_id"], []).append(r[column])
    return {e: float(np.mean(v)) for e, v in sorted(groups.items(), key=lambda kv: str(kv[0]))}


def event_floors(ev: Evaluation, dim: str) -> dict[Any, float]:
    """The sampling floor of KL per event (:func:`mfray.evaluate.metrics.kl_floor`); it depends
    on the real replies only, so the variants' rows of one event agree up to failed
    decisions, and their mean is taken."""
    return event_means(ev, dim, "kl_floor")


def write_report(ev: Evaluation, out_dir: str | Path) -> dict[str, Path]:
    """Write per-simulation and summary CSVs, the Markdown summary and the two plots."""
    import pyarrow.csv as pacsv

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"per_sim": out / "per_simulation.csv", "summary": out / "summary.csv",
             "markdown": out / "summary.md", "plot": out / "shares.png",
             "plot_events": out / "kl_by_event.png"}
    pacsv.write_csv(pa.Table.from_pylist(ev.per_sim), paths["per_sim"])
    pacsv.write_csv(pa.Table.from_pylist(ev.summary), paths["summary"])
    text = "\n\n".join(f"## {dim}\n\n" + markdown_table(ev.summary, dim)
                       for dim in ev.label_space)
    paths["markdown"].write_text(text + "\n")
    plots.shares(ev.curves, ev.label_space, ev.warmup_rounds, ev.interventions, paths["plot"])
    _plot_kl_by_event(ev, paths["plot_events"])
    return paths


def _plot_kl_by_event(ev: Evaluation, path: Path) -> None:
    """``kl_by_event.png``: per event the mean KL over its seeds with their interval, and the
    mean over events with the summary's interval (:func:`plots.kl_by_event`)."""
    bars, overall = {}, {}
    for dim in ev.label_space:
        rows = [e for e in ev.summary if e["dimension"] == dim]
        bars[dim] = {e["variant"]: event_intervals(ev, dim, e["variant"]) for e in rows}
        overall[dim] = {e["variant"]: (e["kl"], e["kl_lo"], e["kl_hi"]) for e in rows}
    over = ("its seeds (one event)" if any(e["interval_over"] == "seeds" for e in ev.summary)
            else "events")
    note = (f"bars: mean over seeds, whiskers: {ev.cfg.level:.0%} bootstrap interval over "
            f"seeds (none with one seed);\nmean of events: {ev.cfg.level:.0%} interval over {over}")
    plots.kl_by_event(bars, overall, {d: event_floors(ev, d) for d in ev.label_space}, note,
                      path)


def event_intervals(ev: Evaluation, dim: str, variant: str) -> dict[Any, tuple[float, ...]]:
    """KL per event of one variant: the mean over the event's seeds with their bootstrap
    interval (``ev.cfg``'s level and resamples), ``(mean, low, high)``; one seed gives no
    width."""
    groups: dict[Any, list[float]] = {}
    for r in ev.per_sim:
        if r["dimension"] == dim and r["variant"] == variant:
            groups.setdefault(r["event_id"], []).append(r["kl"])
    return {e: M.bootstrap_ci(v, level=ev.cfg.level, n_resamples=ev.cfg.n_bootstrap,
                              seed=ev.cfg.seed)
            for e, v in sorted(groups.items(), key=lambda kv: str(kv[0]))
            if not all(map(math.isnan, v))}


def console_summary(ev: Evaluation, files: Sequence[str | Path] = ()) -> str:
    """A summary for the console, under 100 characters a line: per dimension one line per
    variant with KL [interval], JS, TV and macro F1, the sampling floor, then the files that
    hold the full tables (:func:`write_report`'s paths)."""
    lines = []
    for dim in ev.label_space:
        rows = [e for e in ev.summary if e["dimension"] == dim]
        over = "seeds (one event)" if rows[0]["interval_over"] == "seeds" else "events"
        width = max(len("variant"), *(len(e["variant"]) for e in rows))
        lines += [(f"{dim}: mean over {rows[0]['n_events']} event(s) [{ev.cfg.level:.0%} "
                  f"interval over {over}], rollout agents; KL lower is better"),
                  (f"  {'variant':<{width}}  {'KL [interval]':<24}  {'JS':>6}  {'TV':>6}  "
                  f"{'F1 macro':>8}")]
        for e in rows:
            lines.append(f"  {e['variant']:<{width}}  {_interval(e, 'kl'):<24}  "
                         f"{e['js']:>6.3f}  {e['tv']:>6.3f}  {e['f1_macro']:>8.3f}")
        floor = list(event_floors(ev, dim).values())
        if floor:
            lines.append(f"  sampling floor of KL (mean over events): {np.mean(floor):.3f}")
    if files:
        lines.append(files_line(files))
    return "\n".join(lines)


def files_line(files: Sequence[str | Path]) -> str:
    """``full tables and plots in DIR/: a.csv, b.md, …``, wrapped at 100 characters."""
    groups: dict[Path, list[str]] = {}
    for f in map(Path, files):
        groups.setdefault(f.parent, []).append(f.name)
    text = "; ".join(f"{d}/: {', '.join(names)}" for d, names in groups.items())
    return textwrap.fill(f"full tables and plots in {text}", width=100, subsequent_indent="  ",
                         break_long_words=False, break_on_hyphens=False)


def _interval(e: dict[str, Any], c: str) -> str:
    if math.isnan(e[c]):
        return "–"
    return f"{e[c]:.3f} [{e[c + '_lo']:.3f}, {e[c + '_hi']:.3f}]"
