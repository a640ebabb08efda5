"""Intervention planning (``mfray plan``): which intervention moves a target share most?

The candidates are every combination of the given rounds, counts, labels and texts (inject
``count`` posts with ``label`` and ``text`` after ``round``). They run as one simulation batch:
each candidate is one intervention, and the engine runs every (event, seed, variant) once
untouched and once per candidate with the same random numbers, so each candidate's effect is a
paired difference against its twin, not noise. The report ranks the candidates by their effect
on the target share (:func:`mfray.evaluate.effects.intervention_effects`), with bootstrap
intervals over the (event, seed) pairs, and writes ``plan.md``, ``plan.csv`` and ``plan.png``.
"""

from __future__ import annotations

import csv
import itertools
import math
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from mfray.config import RunConfig
from mfray.errors import ConfigError
from mfray.evaluate import plots
from mfray.interventions import Intervention


def make_candidates(rounds: Sequence[int], counts: Sequence[int], labels: Sequence[str],
               texts: Sequence[str | None] = (None,), dimension: str = "stance"
               ) -> list[Intervention]:
    """Every combination, each named after its settings (``r2-n16-deny-t0``)."""
    if not rounds or not counts or not labels or not texts:
        raise ConfigError("plan: give at least one round, count, label (and text)")
    out = []
    for (r, n, label), (k, text) in itertools.product(
            itertools.product(rounds, counts, labels), enumerate(texts)):
        name = f"r{r}-n{n}-{label}" + (f"-t{k}" if text is not None else "")
        out.append(Intervention(name=name, round=r, kind="inject", dimension=dimension,
                                label=label, count=n, text=text))
    return out


def plan(cfg: RunConfig, out: str | Path, target: tuple[str, str], *, lower: bool,
         candidates: Sequence[Intervention], top: int = 5, progress: bool = True
         ) -> list[dict[str, Any]]:
    """Simulate the candidates beside their twins (resuming a partial run) and rank them.
    Returns one row per (candidate, variant), best first."""
    from mfray.data.schema import read_dataset
    from mfray.engine import simulate
    from mfray.evaluate.effects import intervention_effects
    from mfray.store import RunStore

    if not cfg.sim.data:
        raise ConfigError("plan: give the dataset (--data or sim.data)")
    if cfg.sim.interventions:
        raise ConfigError("plan: the candidates are the interventions; leave "
                          "sim.interventions empty")
    cfg = replace(cfg, sim=replace(cfg.sim, interventions=tuple(candidates)))
    run_dir = Path(out) / "run"
    resume = (run_dir / "runs.parquet").is_file()
    if not resume or RunStore.open(run_dir).run_info()["status"] != "complete":
        simulate(cfg, read_dataset(cfg.sim.data), run_dir, resume=resume, progress=progress)
    rows = intervention_effects(run_dir, target, cfg.eval)
    sign = -1.0 if lower else 1.0
    rows.sort(key=lambda r: (-sign * r["effect"] if not math.isnan(r["effect"]) else math.inf,
                             r["intervention"], r["variant"]))
    by_name = {c.name: c for c in candidates}
    for rank, r in enumerate(rows, 1):
        c = by_name[r["intervention"]]
        r |= {"rank": rank, "count": c.count, "label": c.label, "text": c.text}
    write_plan(rows, Path(out), target, lower, top)
    return rows


def plan_markdown(rows: list[dict[str, Any]], target: tuple[str, str], lower: bool,
                  top: int) -> str:
    goal = f"{'lower' if lower else 'raise'} the share of {target[0]}={target[1]}"
    lines = [f"# Intervention plan: {goal}", "",
             ("| rank | intervention | variant | after round | count | label | text | pairs | "
             "effect on share [95% CI] |"), "|---|---|---|---|---|---|---|---|---|"]
    for r in rows[:top]:
        lines.append(f"| {r['rank']} | {r['intervention']} | {r['variant']} | {r['round']} | "
                     f"{r['count']} | {r['label']} | {r['text'] or ''} | {r['pairs']} | "
                     f"{r['effect']:+.3f} [{r['low']:+.3f}, {r['high']:+.3f}] |")
    lines += ["", (f"{len(rows)} candidates × variants; each effect is treated − untouched twin "
              "(same seeds), over the decisions after the intervention round.")]
    return "\n".join(lines) + "\n"


def write_plan(rows: list[dict[str, Any]], out: Path, target: tuple[str, str], lower: bool,
               top: int) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = {"md": out / "plan.md", "csv": out / "plan.csv", "png": out / "plan.png"}
    paths["md"].write_text(plan_markdown(rows, target, lower, top), encoding="utf-8")
    cols = ["rank", "intervention", "variant", "round", "count", "label", "text", "target",
            "pairs", "effect", "low", "high"]
    with open(paths["csv"], "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    plots.plan(rows[:max(top, 1) * 2], target, paths["png"])
    return paths
