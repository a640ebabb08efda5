"""What the fitted variants were fitted to (a run's ``references.parquet``), as a table."""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from mfray.variants import variant


def _fitted(row: dict[str, Any]) -> str:
    """A fitted parameter: a prior weight (crowd, mf-cal), a warm-up weight (persistence), or
    nothing beyond a mix (base-rate, warmup)."""
    if row["crowd_prior"] is not None:
        return f"prior k = {row['crowd_prior']:g}"
    if row["persistence_weight"] is not None:
        return f"warm-up weight {row['persistence_weight']:.2f}"
    return "the warm-up's mix" if variant(row["variant"]).rule == "warmup" else "the base rate"


def format_reference_fits(fits: pa.Table) -> str:
    """One line per fitted variant and dimension: its fitted parameter and on how many units
    each value was fitted, in brackets, and the range over units of P(like the training
    events | warm-up) for the shift-robust ones (``RunStore.read_references``), e.g.
    ``| crowd | stance | prior k = 5 (4) | 0.02–0.97 | 11 |``; the distributions are in the
    table itself."""
    lines = ["| variant | dimension | fitted (units) | P(like training) | training events |",
             "|---|---|---|---|---|"]
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in fits.to_pylist():
        groups.setdefault((row["variant"], row["dimension"]), []).append(row)
    for (name, dim), rows in sorted(groups.items()):
        values = [_fitted(r) for r in rows]
        counts = {v: values.count(v) for v in dict.fromkeys(values)}
        fitted = "; ".join(f"{v} ({n})" for v, n in counts.items())
        likes = sorted(r["like_training"] for r in rows if r["like_training"] is not None)
        like = "–".join(dict.fromkeys(f"{x:.2f}" for x in (likes[0], likes[-1]))) \
            if likes else "—"
        n_train = sorted({r["n_train_events"] for r in rows})
        train = f"{n_train[0]}" if len(n_train) == 1 else f"{n_train[0]}–{n_train[-1]}"
        lines.append(f"| {name} | {dim} | {fitted} | {like} | {train} |")
    return "\n".join(lines)
