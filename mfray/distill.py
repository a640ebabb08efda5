"""``mfray distill``: a distilled policy from a run of the LLM policy, and how far its
simulations are from the LLM's (issue 42; the model: :mod:`mfray.llm.distill`).

The teacher run must log its prompts (``--set policy.log_prompts=true``): each scored prompt is
logged with the model's option scores, the targets. Distinct prompts are fitted once (the
seeds of a simulation often ask the same). :func:`side_by_side` sets two runs of the same
events and seeds against each other: per event and variant, the KL of the student's simulated
stance distribution from the teacher's.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.compute as pc
from scipy.special import softmax

from mfray.errors import MfrayError
from mfray.evaluate.metrics import distribution_from_probs, kl
from mfray.llm.distill import DISTILLED_FILE, DistilledModel, fit_distilled
from mfray.store import RunStore


def logged_scores(run_dir: str | Path) -> dict[tuple[str, ...], tuple[list[str], np.ndarray]]:
    """The teacher's distinct scored prompts per option set, with its option distributions,
    from ``prompts*.jsonl`` of ``run_dir`` (failed calls left out)."""
    files = sorted(Path(run_dir).glob("prompts*.jsonl"))
    if not files:
        raise MfrayError(f"{run_dir} has no prompt log: simulate the teacher with "
                         "--set policy.log_prompts=true")
    seen: dict[tuple[str, ...], dict[str, list[float]]] = {}
    for path in files:
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                row = json.loads(line)
                if row.get("role") == "policy" and row.get("log_scores") is not None:
                    seen.setdefault(tuple(row["options"]), {})[row["prompt"]] = row["log_scores"]
    if not seen:
        raise MfrayError(f"the prompt log of {run_dir} holds no scored choice-mode prompts "
                         "(a run from before mfray logged the scores, or in text mode)")
    return {opts: (list(rows), softmax(np.array(list(rows.values()), float), axis=1))
            for opts, rows in seen.items()}


def distill(run_dir: str | Path, out: str | Path, *, heldout: float = 0.2,
            seed: int = 0) -> tuple[Path, list[dict[str, Any]]]:
    """Fit a distilled policy to the teacher run's logged prompts; write ``OUT/distilled.json``
    (``policy.model=OUT`` simulates with it) and return it with the fit's report, one row per
    option set (held-out mean KL per prompt, and that of the teacher's mean distribution)."""
    teacher = RunStore.open(run_dir)
    models, report = [], []
    for opts, (prompts, probs) in logged_scores(run_dir).items():
        model, row = fit_distilled(prompts, probs, opts, heldout=heldout, seed=seed)
        models.append(model)
        report.append(row)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    path = DistilledModel(models, teacher=teacher.run_info()["model_id"]).save(
        out / DISTILLED_FILE, report)
    return path, report


def simulated(store: RunStore, dim: str) -> dict[tuple[str, str], np.ndarray]:
    """Per (event, variant), the simulated distribution of ``dim``: the mean action
    distribution of the rollout decisions, over every seed."""
    table = store.read_decisions(columns=["event_id", "variant", "is_warmup", "probs", "ok"])
    table = table.filter(pc.and_(pc.invert(table["is_warmup"]), table["ok"]))
    probs = pc.struct_field(table["probs"], dim).to_pylist()
    out: dict[tuple[str, str], list[Any]] = {}
    for e, v, p in zip(table["event_id"].to_pylist(), table["variant"].to_pylist(), probs,
                       strict=True):
        if p is not None:
            out.setdefault((e, v), []).append(p)
    return {k: distribution_from_probs(np.array(rows)) for k, rows in out.items()}


def side_by_side(teacher: str | Path, student: str | Path,
                 dims: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Per event, variant and dimension: the teacher's and the student's simulated
    distributions and the KL of the student's from the teacher's."""
    a, b = RunStore.open(teacher), RunStore.open(student)
    rows = []
    for dim in dims or list(a.label_space):
        ta, sb = simulated(a, dim), simulated(b, dim)
        for key in sorted(ta.keys() & sb.keys()):
            rows.append({"event_id": key[0], "variant": key[1], "dimension": dim,
                         "teacher": ta[key].tolist(), "student": sb[key].tolist(),
                         "kl": kl(ta[key], sb[key])})
    if not rows:
        raise MfrayError(f"{teacher} and {student} share no simulated event and variant")
    return rows
