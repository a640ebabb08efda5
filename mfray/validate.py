"""``mfray validate``: is a simulator any good on this data, before anyone trusts it?

For a dataset, a set of variants and, optionally, tuned adapters (one per held-out event), one
table per set of events, every variant against the plainest readings of the crowd (``warmup``,
the event's own first replies; ``base-rate``, the other events' mix) and the sampling floor:

- ``real``: leave one event out on the events with at least ``sim.min_replies`` replies
  (every fitted variant fits on the other events; a tuned variant reads the adapter trained
  without the event);
- ``copies``: the same events resampled to other label mixes (``Dirichlet(alpha)``,
  :func:`mfray.data.mix.mix_events`), simulated with several seeds: events unlike the
  training events, as method.md §5 says unseen events are;
- ``synthetic`` (optional): a synthetic world's events, where ``bayes`` is the best reading
  possible.

Each set ends with a verdict on one variant (the recommended one where it ran). Every run is a
run directory under ``out``: rerun the command to resume an interrupted validation.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from mfray.config import RunConfig
from mfray.data.mix import mix_events, source_event
from mfray.data.schema import Dataset, read_dataset, write_dataset
from mfray.errors import ConfigError
from mfray.evaluate.compare import compare, per_event_kl, relative_change
from mfray.schedule import build_units
from mfray.store import RunStore
from mfray.variants import RECOMMENDED, variant

PLAIN = ("warmup", "base-rate")  # the readings every variant is set against
TOLERANCE = 0.10  # within 10 % of the best plain reading counts as "as good as"
ABS_TOLERANCE = 0.005  # ... as does within 0.005 nats (a small KL's 10 % is noise)


@dataclass(frozen=True)
class ValidateSettings:
    """What ``mfray validate`` runs besides the run config."""

    copies: int = 3  # resampled copies per event
    copy_seeds: tuple[int, ...] = (0, 1)  # simulation seeds on the copies
    alpha: float = 1.0  # the copies' mixes ~ Dirichlet(alpha)
    mix_seed: int = 0  # which mixes are drawn
    synthetic: bool = False  # also a synthetic world
    tuned: tuple[tuple[str, str], ...] = ()  # (variant, adapter path with {event})


def _say(message: str) -> None:
    print(f"mfray validate: {message}", file=sys.stderr, flush=True)


def _run(cfg: RunConfig, ds: Dataset, out: Path) -> Path:
    """One simulation run in ``out``, resumed if an earlier validation left it unfinished."""
    from mfray.engine import simulate

    if (out / "runs.parquet").exists():
        if RunStore.open(out).run_info()["status"] == "complete":
            return out
        simulate(cfg, ds, out, resume=True)
    else:
        simulate(cfg, ds, out)
    return out


def _tuned_runs(cfg: RunConfig, ds: Dataset, out: Path, units: dict[str, list[str]],
                tuned: Sequence[tuple[str, str]], seeds: tuple[int, ...]) -> list[str]:
    """Per tuned variant and held-out event, a run of the event's units with the adapter
    trained without it; the run specs rename the prompts' variant to the tuned name."""
    specs = []
    for name, pattern in tuned:
        runs_as = variant(name).prompt_variant
        for event, events in units.items():
            adapter = pattern.format(event=event)
            if not Path(adapter).exists():
                raise ConfigError(f"--tuned {name}: no adapter at {adapter}")
            run = replace(cfg, sim=replace(cfg.sim, variants=(runs_as,), events=tuple(events),
                                           seeds=seeds),
                          policy=replace(cfg.policy, adapter=adapter))
            _say(f"{name} on {event} ({len(events)} unit(s)), adapter {adapter}")
            specs.append(f"{_run(run, ds, out / f'{name}-{event}')}:{runs_as}={name}")
    return specs


def _events(cfg: RunConfig, ds: Dataset) -> list[str]:
    """The events to hold out in turn: ``sim.events``, or every event with enough replies."""
    out = list(dict.fromkeys(u.event_id for u in build_units(ds, replace(cfg.sim, unit="event"))))
    if len(out) < 2:
        raise ConfigError(f"validate needs at least two events with {cfg.sim.min_replies}+ "
                          f"replies (sim.min_replies); the data has {len(out)}")
    return out


def run_sets(cfg: RunConfig, ds: Dataset, out: Path, vs: ValidateSettings
             ) -> dict[str, list[str]]:
    """Simulate every set; returns the run specs of each set, for :func:`set_table`."""
    variants = tuple(dict.fromkeys((*PLAIN, *cfg.sim.variants)))
    events = _events(cfg, ds)
    base = replace(cfg, sim=replace(cfg.sim, variants=variants))
    sets: dict[str, list[str]] = {}
    _say(f"real: {len(events)} events, each held out in turn")
    real = replace(base, sim=replace(base.sim, events=tuple(events)))
    sets["real"] = [str(_run(real, ds, out / "real"))]
    sets["real"] += _tuned_runs(real, ds, out, {e: [e] for e in events}, vs.tuned,
                                real.sim.seeds)
    if vs.copies:
        data = out / "copies-data"
        # a copy is an event like the others: sim.min_replies replies at least, and one round
        # of rollout after its warm-up. Topped up, not redrawn: every event gets its copies
        # (prince-toronto, 91 replies, gives none of 80 without), and every mix drawn is used
        least = max(cfg.sim.min_replies, cfg.sim.warmup + cfg.sim.round_size)
        if not (data / "events.parquet").exists():
            mixed, _ = mix_events(ds, events, vs.copies, alpha=vs.alpha, seed=vs.mix_seed,
                                  min_agents=least, top_up=True)
            write_dataset(mixed, data)
        mixed = read_dataset(data)
        ids = [e for e in mixed.event_ids() if source_event(e) != e]
        _say(f"copies: {len(ids)} resampled copies of {len(events)} events, seeds "
             f"{list(vs.copy_seeds)}")
        copies = replace(base, sim=replace(base.sim, data=str(data), events=tuple(ids),
                                           seeds=vs.copy_seeds, min_replies=least))
        sets["copies"] = [str(_run(copies, mixed, out / "copies"))]
        by_event = {e: [c for c in ids if source_event(c) == e] for e in events}
        sets["copies"] += _tuned_runs(copies, mixed, out / "copies-tuned",
                                      {e: c for e, c in by_event.items() if c}, vs.tuned,
                                      vs.copy_seeds)
    if vs.synthetic:
        sets["synthetic"] = [str(_synthetic(base, out))]
    return sets


def _synthetic(cfg: RunConfig, out: Path) -> Path:
    """The synthetic world's events with the variants and ``bayes``, leave one event out."""
    from mfray.data.synthetic import WorldParams, generate

    data = out / "synthetic-data"
    if not (data / "events.parquet").exists():
        write_dataset(generate(WorldParams(warmup=cfg.sim.warmup))[1], data)
    ds = read_dataset(data)
    variants = tuple(dict.fromkeys((*cfg.sim.variants, "persistence", "bayes")))
    _say(f"synthetic: {len(ds.event_ids())} events of a synthetic world")
    run = replace(cfg, sim=replace(cfg.sim, data=str(data), variants=variants, events=(),
                                   min_replies=0))
    return _run(run, ds, out / "synthetic")


def set_table(specs: Sequence[str], cfg: RunConfig) -> dict[str, Any]:
    """One set's table: per variant KL [interval] and its paired change against each plain
    reading, per dimension; the sampling floor; the verdict."""
    comp = compare(list(specs), cfg.eval)
    ev = comp.evaluation
    dims: dict[str, Any] = {}
    for dim in comp.label_space:
        rows = []
        for r in (r for r in comp.rows if r["dimension"] == dim):
            row = {"variant": r["variant"], "events": r["n_events"], "kl": r["kl"],
                   "kl_lo": r["kl_lo"], "kl_hi": r["kl_hi"]}
            mine = per_event_kl(ev, r["variant"], dim)
            for plain in PLAIN:
                theirs = per_event_kl(ev, plain, dim)
                units = sorted(set(mine) & set(theirs), key=str)
                row[f"vs_{plain}"] = relative_change([mine[u] for u in units],
                                                     [theirs[u] for u in units], cfg.eval)
            rows.append(row)
        floor = comp.floors.get(dim)
        dims[dim] = {"rows": rows, "floor": floor and [floor["kl_floor"], floor["kl_floor_lo"],
                                                       floor["kl_floor_hi"]],
                     "verdict": verdict(rows)}
    return dims


def verdict(rows: list[dict[str, Any]]) -> str:
    """One line on the recommended variant (or the first that is not a plain reading): as good
    as the best plain reading (within :data:`TOLERANCE` or :data:`ABS_TOLERANCE`), better, or
    worse."""
    by = {r["variant"]: r for r in rows}
    focus = RECOMMENDED if RECOMMENDED in by else next(
        (v for v in by if v not in PLAIN), None)
    plain = [by[p] for p in PLAIN if p in by and not math.isnan(by[p]["kl"])]
    if focus is None or not plain:
        return "no verdict: nothing to set against the plain readings"
    best, mine = min(plain, key=lambda r: r["kl"]), by[focus]["kl"]
    ratio = mine / best["kl"] if best["kl"] > 0 else math.inf
    said = (f"{focus}: KL {mine:.3f} = {ratio:.2f} x the best plain reading "
            f"({best['variant']}, {best['kl']:.3f})")
    if ratio <= 1 - TOLERANCE:
        return f"{said}: better than copying it; the simulator reads this data"
    if ratio <= 1 + TOLERANCE or mine - best["kl"] <= ABS_TOLERANCE:
        return (f"{said}: as good (within {TOLERANCE:.0%} or {ABS_TOLERANCE} nats); the "
                "simulator reads the crowd here")
    return f"{said}: worse; do not trust it on data like this"


def _pct(change: tuple[float, float, float]) -> str:
    point, lo, hi = change
    return "–" if math.isnan(point) else f"{point:+.1f} [{lo:+.1f}, {hi:+.1f}]"


def markdown(tables: dict[str, dict[str, Any]], level: float) -> str:
    """Every set's table (per dimension) with its floor and verdict, as Markdown."""
    out = ["# mfray validate", ""]
    for name, dims in tables.items():
        for dim, t in dims.items():
            out += [f"## {name}: {dim}", "",
                    (f"| variant | events | KL [{level:.0%} interval] | ΔKL % vs warmup | "
                    "ΔKL % vs base-rate |"), "|---|---|---|---|---|"]
            out += [f"| {r['variant']} | {r['events']} | {r['kl']:.3f} [{r['kl_lo']:.3f}, "
                    f"{r['kl_hi']:.3f}] | {_pct(r['vs_warmup'])} | {_pct(r['vs_base-rate'])} |"
                    for r in t["rows"]]
            if t["floor"]:
                lo_hi = f"[{t['floor'][1]:.3f}, {t['floor'][2]:.3f}]"
                out.append(f"\nSampling floor of KL: {t['floor'][0]:.3f} {lo_hi}.")
            out += ["", f"**Verdict**: {t['verdict']}.", ""]
    return "\n".join(out)


def validate(cfg: RunConfig, ds: Dataset, out: str | Path,
             settings: ValidateSettings | None = None) -> dict[str, dict[str, Any]]:
    """Run every set (:func:`run_sets`), then write ``validate.md`` and ``validate.json`` in
    ``out``; returns the tables."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    sets = run_sets(cfg, ds, out, settings or ValidateSettings())
    tables = {name: set_table(specs, cfg) for name, specs in sets.items()}
    (out / "validate.md").write_text(markdown(tables, cfg.eval.level), encoding="utf-8")
    (out / "validate.json").write_text(json.dumps(tables, indent=1, default=float),
                                       encoding="utf-8")
    return tables


def summary(tables: dict[str, dict[str, Any]], out: Path) -> str:
    """The console's lines: per set and dimension, KL per variant and the verdict."""
    lines = []
    for name, dims in tables.items():
        for dim, t in dims.items():
            kls = ", ".join(f"{r['variant']} {r['kl']:.3f}" for r in t["rows"])
            lines += [f"{name} ({dim}): {kls}", f"  {t['verdict']}"]
    lines.append(f"tables: {out / 'validate.md'}")
    return "\n".join(lines)
