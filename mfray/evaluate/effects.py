"""The effect of each intervention: the change of a target share against the untouched twin.

Twins share seeds and unit, so each (unit, seed) pair gives one paired difference of the target
label's share among the decisions after the intervention round; the report is their mean with
a bootstrap interval over the pairs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from mfray.config import EvalConfig, RunConfig
from mfray.config_migrate import stored_config
from mfray.errors import ConfigError
from mfray.evaluate import metrics as M
from mfray.store import RunStore
from mfray.variants import twin_label


def intervention_effects(run_dir: str | Path, target: tuple[str, str] | None = None,
                         cfg: EvalConfig | None = None) -> list[dict[str, Any]]:
    """One row per (variant, intervention): mean change of the target share [interval].

    ``target`` is ``(dimension, label)``; by default each intervention's own dimension and
    label (e.g. the ``deny`` share after injecting ``deny`` posts).
    """
    cfg = cfg or EvalConfig()
    store = RunStore.open(run_dir)
    run_cfg = stored_config(RunConfig, store.config(), store.run_dir / "config.json")
    if not run_cfg.sim.interventions:
        return []
    data = store.read_decisions(columns=["event_id", "variant", "seed", "round", "ok",
                                         "action", "is_warmup"]).to_pydict()
    rows = []
    for iv in run_cfg.sim.interventions:
        dim, label = target or (iv.dimension, iv.label)
        if not label:
            raise ConfigError(f"intervention {iv.name} ({iv.kind}): give a target label")
        for variant in run_cfg.sim.variants:
            diffs = _paired_differences(data, variant, twin_label(variant, iv.name), iv.round,
                                        dim, label)
            mean, lo, hi = M.bootstrap_ci(diffs, level=cfg.level, n_resamples=cfg.n_bootstrap,
                                          seed=cfg.seed)
            rows.append({"intervention": iv.name, "variant": variant, "round": iv.round,
                         "target": f"{dim}={label}", "pairs": len(diffs), "effect": mean,
                         "low": lo, "high": hi})
    return rows


def _paired_differences(data: dict[str, list[Any]], twin: str, treated: str, after: int,
                        dim: str, label: str) -> list[float]:
    """Target share (treated − twin) per (event, seed), over the decisions after the round."""
    hits: dict[tuple[str, str, int], list[int]] = {}
    for i, variant in enumerate(data["variant"]):
        if variant not in (twin, treated) or data["round"][i] <= after or not data["ok"][i] \
                or data["is_warmup"][i]:
            continue
        key = (variant, data["event_id"][i], data["seed"][i])
        hits.setdefault(key, []).append(int(data["action"][i][dim] == label))
    diffs = []
    for (variant, event, seed), values in sorted(hits.items()):
        other = hits.get((twin, event, seed))
        if variant == treated and other:
            diffs.append(float(np.mean(values) - np.mean(other)))
    return diffs


def format_effects(rows: list[dict[str, Any]]) -> str:
    """Markdown table of the effects."""
    lines = ["| intervention | variant | after round | target | pairs | effect on share [95% CI] |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['intervention']} | {r['variant']} | {r['round']} | {r['target']} | "
                     f"{r['pairs']} | {r['effect']:+.3f} [{r['low']:+.3f}, {r['high']:+.3f}] |")
    return "\n".join(lines)
