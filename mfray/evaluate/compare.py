"""The paper's comparison table across variants, and the forecasting report (method.md §5).

:func:`compare` orders the variants of a run as the paper does, takes every metric with its
bootstrap interval from :func:`mfray.evaluate.report.evaluate`, and adds the relative KL change
of each mean-field variant against the best non-mean-field LLM variant and against the best
statistical reference, with a paired bootstrap interval over events.

:func:`forecast` looks only at what comes after the warm-up: real vs simulated share curves per
dimension over rounds, pooled over events, and per horizon (short/mid/long thirds of the rollout
rounds) the real and simulated share of every option and the KL between them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from scipy import stats

from mfray.config import EvalConfig
from mfray.errors import DataError
from mfray.evaluate import metrics as M
from mfray.evaluate import plots
from mfray.evaluate.report import (
    METRICS,
    Evaluation,
    RunRead,
    RunSpec,
    evaluate,
    event_floors,
    files_line,
    read_runs,
)
from mfray.variants import RECOMMENDED, Variant, known, variant

#: Row order of the comparison table; variants not listed follow in name order.
ORDER = ("state", "recent", "popular", "mf", "mf-text", "mf-hybrid", "mf-cal", "sft",
         "base-rate", "warmup", "persistence", "crowd")
#: what a mean-field variant is measured against: the best LLM variant that reads no mean
#: field, and the best reference that reads none (``crowd`` is not in that pool: the reference
#: is the best of ``base-rate``, ``warmup`` and ``persistence``, method.md §3)
AGAINST = ("llm", "ref")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def variant_order(variants: Sequence[str]) -> list[str]:
    """The variants in the paper's table order, unknown ones last in name order."""
    rank = {v: i for i, v in enumerate(ORDER)}
    return sorted(set(variants), key=lambda v: (rank.get(v, len(ORDER)), v))


def _ran(ev: Evaluation, label: str) -> tuple[Variant | None, bool]:
    """The variant a label's simulations ran (None for a label no run config names) and
    whether they are an intervened twin, from the runs' configs (``Evaluation.origin``), so a
    renamed label (``DIR:mf=mf-tuned``) keeps its variant's traits."""
    name, intervention = ev.origin.get(label, (label, None))
    return (variant(name) if known(name) else None), intervention is not None


def is_twin(ev: Evaluation, label: str) -> bool:
    """Whether ``label``'s simulations are the twin that had an intervention."""
    return _ran(ev, label)[1]


def is_meanfield(ev: Evaluation, label: str) -> bool:
    """An untouched simulation of an LLM variant that reads a mean field: the rows compared
    with the baselines (an intervened twin is not; its untouched twin is)."""
    v, twin = _ran(ev, label)
    return v is not None and not twin and v.needs_model and v.meanfield != "none"


def kind(ev: Evaluation, label: str) -> str:
    """``mean field``, ``other LLM`` or ``no LLM``: how the tables and plots mark a label
    (twins as their variant)."""
    v, _ = _ran(ev, label)
    if v is not None and not v.needs_model:
        return "no LLM"
    return "mean field" if v is not None and v.meanfield != "none" else "other LLM"


def _pool(ev: Evaluation, label: str, tag: str) -> bool:
    """Whether ``label`` is in the ``tag`` pool of :data:`AGAINST`."""
    v, twin = _ran(ev, label)
    if v is None or twin or v.meanfield != "none":
        return False
    return v.needs_model if tag == "llm" else v.kind == "reference"


@dataclass(frozen=True)
class Comparison:
    """Summary rows in table order (one per dimension and variant) with the relative changes."""

    label_space: dict[str, tuple[str, ...]]
    rows: list[dict[str, Any]]
    evaluation: Evaluation
    #: per dimension, the sampling floor of KL over the events of the table:
    #: ``n_events``, ``kl_floor`` and its interval (``kl_floor_lo``, ``kl_floor_hi``)
    floors: dict[str, dict[str, float]]


# ---------------------------------------------------------------- comparison


def per_event_kl(ev: Evaluation, variant: str, dim: str) -> dict[Any, float]:
    """KL per unit (seeds averaged within an event); with one event the units are its seeds,
    as in :func:`mfray.evaluate.report.summarise`."""
    rows = [r for r in ev.per_sim if r["variant"] == variant and r["dimension"] == dim]
    events = {r["event_id"] for r in ev.per_sim}
    key = (lambda r: r["event_id"]) if len(events) > 1 else (lambda r: r["seed"])
    groups: dict[Any, list[float]] = {}
    for r in rows:
        if not math.isnan(r["kl"]):
            groups.setdefault(key(r), []).append(r["kl"])
    return {k: float(np.mean(v)) for k, v in groups.items()}


def relative_change(new: Sequence[float], base: Sequence[float], cfg: EvalConfig
                    ) -> tuple[float, float, float]:
    """``100 · (mean(new) − mean(base)) / mean(base)`` over paired units, with a paired
    percentile-bootstrap interval (the same units are resampled for both sides)."""
    a, b = np.asarray(new, dtype=float), np.asarray(base, dtype=float)
    if a.size == 0 or a.shape != b.shape:
        return math.nan, math.nan, math.nan

    def stat(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            return 100.0 * (x.mean(axis=axis) - y.mean(axis=axis)) / y.mean(axis=axis)

    point = float(stat(a, b))
    if a.size == 1 or not math.isfinite(point):
        return point, point, point
    res = stats.bootstrap((a, b), stat, paired=True, vectorized=True, method="percentile",
                          confidence_level=cfg.level, n_resamples=cfg.n_bootstrap,
                          rng=np.random.default_rng(cfg.seed))
    return point, float(res.confidence_interval.low), float(res.confidence_interval.high)


def _change(ev: Evaluation, by_variant: dict[str, dict[str, Any]], variant: str, dim: str,
            pool: Sequence[str], cfg: EvalConfig) -> dict[str, Any]:
    """The relative KL change of ``variant`` against the best (lowest KL) variant of ``pool``."""
    present = [v for v in pool if v in by_variant and not math.isnan(by_variant[v]["kl"])]
    if not present:
        return {"base": None, "change": math.nan, "lo": math.nan, "hi": math.nan}
    best = min(present, key=lambda v: by_variant[v]["kl"])
    mine, theirs = per_event_kl(ev, variant, dim), per_event_kl(ev, best, dim)
    units = sorted(set(mine) & set(theirs), key=str)  # paired: the same events on both sides
    change, lo, hi = relative_change([mine[u] for u in units], [theirs[u] for u in units], cfg)
    return {"base": best, "change": change, "lo": lo, "hi": hi}


def compare(run_dir: RunSpec | RunRead, cfg: EvalConfig | None = None) -> Comparison:
    """The comparison table of a run: every variant × metric with bootstrap intervals over
    events, plus for mean-field variants the relative KL change (in %) against the best
    non-mean-field LLM variant (``rel_kl_llm*``) and the best reference (``rel_kl_ref*``)."""
    cfg = cfg or EvalConfig()
    ev = evaluate(run_dir, cfg)
    rows = []
    for dim in ev.label_space:
        by_variant = {e["variant"]: e for e in ev.summary if e["dimension"] == dim}
        for label in variant_order(list(by_variant)):
            row = dict(by_variant[label])
            for tag in AGAINST:
                pool = [v for v in variant_order(list(by_variant)) if _pool(ev, v, tag)]
                ch = (_change(ev, by_variant, label, dim, pool, cfg)
                      if is_meanfield(ev, label)
                      else {"base": None, "change": math.nan, "lo": math.nan, "hi": math.nan})
                row |= {f"rel_kl_{tag}_base": ch["base"], f"rel_kl_{tag}": ch["change"],
                        f"rel_kl_{tag}_lo": ch["lo"], f"rel_kl_{tag}_hi": ch["hi"]}
            rows.append(row)
    floors = {}
    for dim in ev.label_space:
        per_event = event_floors(ev, dim)
        if per_event:
            mean, lo, hi = M.bootstrap_ci(list(per_event.values()), level=cfg.level,
                                          n_resamples=cfg.n_bootstrap, seed=cfg.seed)
            floors[dim] = {"n_events": len(per_event), "kl_floor": mean, "kl_floor_lo": lo,
                           "kl_floor_hi": hi}
    return Comparison(ev.label_space, rows, ev, floors)


def _cell(row: dict[str, Any], col: str, fmt: str = ".3f") -> str:
    v = row[col]
    if v is None or math.isnan(v):
        return "–"
    return f"{v:{fmt}} [{row[col + '_lo']:{fmt}}, {row[col + '_hi']:{fmt}}]"


def _change_cell(ev: Evaluation, row: dict[str, Any], tag: str) -> str:
    if not is_meanfield(ev, row["variant"]):
        return ""
    if row[f"rel_kl_{tag}_base"] is None:
        return "n/a"
    return f"{_cell(row, f'rel_kl_{tag}', '+.1f')} vs {row[f'rel_kl_{tag}_base']}"


def comparison_markdown(comp: Comparison, dim: str) -> str:
    """One dimension of the comparison as a Markdown table, mean [interval] per metric."""
    head = ["variant", "events", "sims", *METRICS, "ΔKL vs best LLM (%)",
            "ΔKL vs best reference (%)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    rows = [r for r in comp.rows if r["dimension"] == dim]
    for r in rows:
        ev = comp.evaluation
        name = f"*{r['variant']}*" if kind(ev, r["variant"]) == "no LLM" else r["variant"]
        cells = [name, str(r["n_events"]), str(r["n_sims"]), *(_cell(r, m) for m in METRICS),
                 _change_cell(ev, r, "llm"), _change_cell(ev, r, "ref")]
        lines.append("| " + " | ".join(cells) + " |")
    level = "intervals over seeds (one event)" if any(
        r["interval_over"] == "seeds" for r in rows) else "bootstrap intervals over events"
    lines.append(f"\nMean [{level}]. ΔKL = (KL − KL_best) / KL_best, paired over the same "
                 "events; negative is better; the reference is the best of base-rate, warmup "
                 f"and persistence. Variants without an LLM in italics. {recommended(comp)}")
    if dim in comp.floors:
        f = comp.floors[dim]
        lines.append(f"\nSampling floor of KL for the {f['n_events']} event(s)' real replies: "
                     f"{_cell(f, 'kl_floor')}, what a simulator that knew each event's mix "
                     "exactly would still score on average (`mfray.evaluate.metrics.kl_floor`).")
    return "\n".join(lines)


def compare_summary(comp: Comparison, files: Sequence[str | Path] = ()) -> str:
    """A summary of the comparison for the console, under 100 characters a line: per dimension
    one line per variant with KL [interval] and, for mean-field variants, the relative KL change
    against the best other LLM variant and the best reference, then the sampling floor and the
    files that hold the full tables (:func:`write_comparison`'s and :func:`write_forecast`'s)."""
    lines = []
    for dim in comp.label_space:
        rows = [r for r in comp.rows if r["dimension"] == dim]
        over = "seeds (one event)" if rows[0]["interval_over"] == "seeds" else "events"
        bases = {tag: next((r[f"rel_kl_{tag}_base"] for r in rows
                            if r[f"rel_kl_{tag}_base"] is not None), None) for tag in AGAINST}
        width = max(len("variant"), *(len(r["variant"]) for r in rows))
        head = f"  {'variant':<{width}}  {'KL [interval]':<24}"
        head += "".join(f"  {'ΔKL % vs ' + b:<24}" for b in bases.values() if b)
        lines += [(f"{dim}: KL(real ‖ simulated), mean over {rows[0]['n_events']} event(s) "
                  f"[{comp.evaluation.cfg.level:.0%} interval over {over}]; lower is better"),
                  head.rstrip()]
        for r in rows:
            line = f"  {r['variant']:<{width}}  {_cell(r, 'kl'):<24}"
            for tag, base in bases.items():
                if base:
                    cell = (_cell(r, f"rel_kl_{tag}", "+.1f")
                            if is_meanfield(comp.evaluation, r["variant"]) else "")
                    line += f"  {cell:<24}"
            lines.append(line.rstrip())
        if dim in comp.floors:
            lines.append(f"  sampling floor of KL: {_cell(comp.floors[dim], 'kl_floor')}")
    lines.append(recommended(comp))
    if files:
        lines.append(files_line(files))
    return "\n".join(lines)


def recommended(comp: Comparison) -> str:
    """Which variant mfray recommends, and its KL in this comparison (first dimension)."""
    row = next((r for r in comp.rows if r["variant"] == RECOMMENDED), None)
    here = f"KL {_cell(row, 'kl')} here" if row else "not in this comparison"
    return f"Recommended variant: {RECOMMENDED} ({here}; results/shift-robust.md)."


def _plot_comparison(comp: Comparison, path: Path) -> None:
    """``comparison.png``: KL per variant with its interval (:func:`plots.comparison`);
    mean-field variants, other LLM variants and variants without an LLM in distinct colours."""
    panels = {}
    for dim in comp.label_space:
        rows = [r for r in comp.rows if r["dimension"] == dim]
        cells = []
        for r in rows:
            cells.append((r["variant"], kind(comp.evaluation, r["variant"]), r["kl"], r["kl_lo"],
                          r["kl_hi"]))
        panels[dim] = cells
    floors = {d: (f["kl_floor"], f["kl_floor_lo"], f["kl_floor_hi"])
              for d, f in comp.floors.items()}
    over = ("its seeds (one event)" if any(r["interval_over"] == "seeds" for r in comp.rows)
            else "events")
    plots.comparison(panels, floors, f"whiskers: {comp.evaluation.cfg.level:.0%} bootstrap "
                     f"interval over {over}", path)


def write_comparison(comp: Comparison, out_dir: str | Path) -> dict[str, Path]:
    """Write ``comparison.md``, ``comparison.csv`` and ``comparison.png`` into ``out_dir``."""
    import pyarrow.csv as pacsv

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"markdown": out / "comparison.md", "csv": out / "comparison.csv",
             "plot": out / "comparison.png"}
    text = "\n\n".join(f"## {dim}\n\n" + comparison_markdown(comp, dim)
                       for dim in comp.label_space)
    paths["markdown"].write_text(f"# Comparison\n\n{text}\n")
    pacsv.write_csv(pa.Table.from_pylist(comp.rows), paths["csv"])
    _plot_comparison(comp, paths["plot"])
    return paths


# ---------------------------------------------------------------- forecast


@dataclass(frozen=True)
class Forecast:
    """Rollout share curves and per-horizon shares, pooled over events (and seeds).

    ``rounds`` are the rounds holding at least one rollout agent; ``real[dim]`` and
    ``sim[(variant, dim)]`` are ``len(rounds) × K`` shares (NaN rows where a round has none);
    ``horizons`` maps short/mid/long to their rounds; ``rows`` is the long table (one row per
    variant, dimension, horizon and option) with real share, simulated share and the KL."""

    label_space: dict[str, tuple[str, ...]]
    variants: list[str]
    rounds: np.ndarray
    horizons: dict[str, np.ndarray]
    real: dict[str, np.ndarray]
    sim: dict[tuple[str, str], np.ndarray]
    rows: list[dict[str, Any]]


def _mass(data: dict[str, list[Any]], idx: Sequence[int], dim: str, options: Sequence[str],
          source: str, column: str) -> np.ndarray:
    """Mass per option of the given rows: real or sampled labels, or the probabilities."""
    out = np.zeros(len(options))
    for i in idx:
        if column == "probs" and source == "probs":
            p = data["probs"][i]
            if p is None or p[dim] is None:  # as evaluate(): never mix probs and labels
                raise DataError(f"dimension {dim!r}: some decisions carry no probabilities; "
                                "forecast with --from labels")
            out += np.asarray(p[dim], dtype=float) / np.sum(p[dim])
            continue
        lab = data[column][i]
        if lab is not None and lab[dim] is not None:
            out[options.index(lab[dim])] += 1.0
    return out


def _shares(mass: np.ndarray) -> np.ndarray:
    total = mass.sum(axis=-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, mass / np.where(total > 0, total, 1.0), np.nan)


def forecast(run_dir: RunSpec | RunRead, cfg: EvalConfig | None = None) -> Forecast:
    """Real vs simulated shares after the warm-up, per round and per horizon.

    Real shares come from every rollout agent of the run, once per (event, agent), whatever
    the simulations did; simulated shares from each variant's successful rollout decisions
    (their probabilities or sampled labels, as ``cfg.source``), pooled over events and seeds.
    Horizons are thirds of the pooled rollout rounds, so they match the curves' x-axis (the
    evaluation report's ``kl_short`` etc. instead average per-simulation KLs)."""
    cfg = cfg or EvalConfig()
    read = read_runs(run_dir)
    space, data = read.label_space, read.columns
    roll = [i for i, w in enumerate(data["is_warmup"]) if not w]
    if not roll:
        raise DataError("no rollout decision to forecast (is the warm-up longer than every "
                        "simulation?)", file=read.name)
    rounds = np.array(sorted({data["round"][i] for i in roll}))
    pos = {r: k for k, r in enumerate(rounds.tolist())}
    agents: dict[tuple[Any, int], int] = {}  # one real label per agent, not one per simulation
    by_variant: dict[str, list[list[int]]] = {}
    for i in roll:
        agents.setdefault((data["event_id"][i], data["agent_index"][i]), i)
        if data["ok"][i]:
            by_variant.setdefault(data["variant"][i], [[] for _ in rounds])[
                pos[data["round"][i]]].append(i)
    real_by_round = [[] for _ in rounds]
    for i in agents.values():
        real_by_round[pos[data["round"][i]]].append(i)
    variants = variant_order(list(by_variant))
    real_mass = {d: np.array([_mass(data, idx, d, o, "labels", "real") for idx in real_by_round])
                 for d, o in space.items()}
    sim_mass = {(v, d): np.array([_mass(data, idx, d, o, cfg.source, "probs" if
                                        cfg.source == "probs" else "action")
                                  for idx in by_variant[v]])
                for v in variants for d, o in space.items()}
    horizons = {h: rounds[s] for h, s in M.horizon_slices(len(rounds)).items()}
    rows = _horizon_rows(space, variants, horizons, pos, real_mass, sim_mass)
    return Forecast(space, variants, rounds, horizons,
                    {d: _shares(m) for d, m in real_mass.items()},
                    {k: _shares(m) for k, m in sim_mass.items()}, rows)


def _horizon_rows(space: dict[str, tuple[str, ...]], variants: list[str],
                  horizons: dict[str, np.ndarray], pos: dict[int, int],
                  real_mass: dict[str, np.ndarray], sim_mass: dict[tuple[str, str], np.ndarray]
                  ) -> list[dict[str, Any]]:
    """The long per-horizon table: real and simulated share per option, and the KL."""
    rows = []
    for dim, options in space.items():
        for h, hr in horizons.items():
            if hr.size == 0:
                continue
            sel = [pos[r] for r in hr.tolist()]
            real = real_mass[dim][sel].sum(axis=0)
            for v in variants:
                sim = sim_mass[(v, dim)][sel].sum(axis=0)
                kl = M.kl(real, sim) if real.sum() > 0 and sim.sum() > 0 else math.nan
                for j, option in enumerate(options):
                    rows.append({"variant": v, "dimension": dim, "horizon": h,
                                 "first_round": int(hr[0]), "last_round": int(hr[-1]),
                                 "option": option, "n_real": int(real[j]),
                                 "real_share": float(_shares(real)[j]),
                                 "sim_share": float(_shares(sim)[j]), "kl": kl})
    return rows


def forecast_markdown(fc: Forecast, dim: str) -> str:
    """One dimension: per horizon and option the real share and each variant's simulated
    share, then the KL per variant."""
    head = ["horizon", "rounds", "option", "real", *fc.variants]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    rows = {(r["variant"], r["horizon"], r["option"]): r for r in fc.rows
            if r["dimension"] == dim}
    for h, hr in fc.horizons.items():
        if hr.size == 0:
            continue
        span = f"{hr[0]}–{hr[-1]}"
        for option in [*fc.label_space[dim], None]:
            first = rows[(fc.variants[0], h, option or fc.label_space[dim][0])]
            real = f"{first['real_share']:.3f}" if option else ""
            cells = [f"{rows[(v, h, option)]['sim_share']:.3f}" if option
                     else f"**{rows[(v, h, fc.label_space[dim][0])]['kl']:.3f}**"
                     for v in fc.variants]
            lines.append("| " + " | ".join([h, span, option or "**KL**", real, *cells]) + " |")
    return "\n".join(lines)


def write_forecast(fc: Forecast, out_dir: str | Path) -> dict[str, Path]:
    """Write ``forecast.md``, ``forecast.csv`` (the long horizon table) and ``forecast.png``."""
    import pyarrow.csv as pacsv

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"markdown": out / "forecast.md", "csv": out / "forecast.csv",
             "plot": out / "forecast.png"}
    text = "\n\n".join(f"## {dim}\n\n" + forecast_markdown(fc, dim) for dim in fc.label_space)
    paths["markdown"].write_text(
        "# Forecast after the warm-up\n\nShares pooled over events; horizons are thirds of the "
        f"rollout rounds {fc.rounds[0]}–{fc.rounds[-1]}.\n\n{text}\n")
    pacsv.write_csv(pa.Table.from_pylist(fc.rows), paths["csv"])
    plots.forecast(fc.rounds, fc.horizons, fc.real, fc.sim, fc.label_space, fc.variants,
                   paths["plot"])
    return paths

