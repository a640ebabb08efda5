"""The fitted variants' table of ``mfray evaluate``."""

from __future__ import annotations

import pyarrow as pa

from mfray.evaluate.fits import format_reference_fits
from mfray.store.schema import REFERENCES_SCHEMA


def _row(name: str, unit: str, **kw) -> dict:
    return {"unit_key": unit, "event_id": unit, "variant": name, "dimension": "stance",
            "options": ["a", "b"], "probs": [0.5, 0.5], "persistence_weight": None,
            "like_training": None, "crowd_prior": None, "n_train_events": 5,
            "n_fit_events": None} | kw


def test_one_line_per_variant_with_its_fit_and_the_warm_ups_verdict() -> None:
    rows = [_row("base-rate", "e1"), _row("warmup", "e1"),
            _row("persistence", "e1", persistence_weight=0.0, like_training=0.97),
            _row("persistence", "e2", persistence_weight=0.0, like_training=0.02,
                 n_train_events=4),
            _row("crowd", "e1", crowd_prior=float("inf"), like_training=0.5, n_fit_events=5),
            _row("mf-cal", "e1", crowd_prior=20.0, like_training=0.5, n_fit_events=5)]
    text = format_reference_fits(pa.Table.from_pylist(rows, schema=REFERENCES_SCHEMA))
    lines = text.splitlines()
    assert len(lines) == 2 + 5  # header, rule, one line per variant
    assert "| base-rate | stance | the base rate (1) | — | 5 |" in lines
    assert "| warmup | stance | the warm-up's mix (1) | — | 5 |" in lines
    assert "| persistence | stance | warm-up weight 0.00 (2) | 0.02–0.97 | 4–5 |" in lines
    assert "| crowd | stance | prior k = inf (1) | 0.50 | 5 |" in lines
    assert "| mf-cal | stance | prior k = 20 (1) | 0.50 | 5 |" in lines
