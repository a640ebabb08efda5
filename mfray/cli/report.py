"""``mfray evaluate | compare``: a run set against reality, with the run's ``eval`` section."""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mfray.config import EvalConfig


def run_eval_config(run_dir: str | Path, source: str | None) -> EvalConfig:
    """The ``eval`` section stored with the run (resamples, level, seed, source); ``--from``
    replaces only its source."""
    from mfray.config import RunConfig
    from mfray.config_migrate import stored_config
    from mfray.store import RunStore

    store = RunStore.open(run_dir)
    cfg = stored_config(RunConfig, store.config(), store.run_dir / "config.json").eval
    return cfg if source is None else replace(cfg, source=source)


def cmd_evaluate(args: argparse.Namespace) -> None:
    from mfray.evaluate.effects import format_effects, intervention_effects
    from mfray.evaluate.fits import format_reference_fits
    from mfray.evaluate.report import (
        console_summary,
        evaluate,
        files_line,
        write_report,
    )
    from mfray.store import RunStore

    cfg = run_eval_config(args.run_dir, args.source)
    ev = evaluate(args.run_dir, cfg)
    paths = write_report(ev, args.out or Path(args.run_dir) / "eval")
    # the console gets a summary a terminal holds; every metric's table is in the files
    print(f"simulated distribution from {cfg.source}\n")
    print(console_summary(ev))
    fits = RunStore.open(args.run_dir).read_references()
    if fits.num_rows:
        print("\nreferences, fitted on the training events (references.parquet)\n")
        print(format_reference_fits(fits))
    effects = intervention_effects(args.run_dir, cfg=cfg)
    if effects:
        print("\nintervention effects (treated − untouched twin, same seeds), decisions after "
              "the intervention round\n")
        print(format_effects(effects))
    print("\n" + files_line(list(paths.values())))


def cmd_compare(args: argparse.Namespace) -> None:
    from mfray.evaluate.compare import (
        compare,
        compare_summary,
        forecast,
        write_comparison,
        write_forecast,
    )
    from mfray.evaluate.report import parse_run, read_runs

    first = parse_run(args.run_dir[0])[0]
    cfg = run_eval_config(first, args.source)
    out = Path(args.out or first / "compare")
    runs = read_runs(args.run_dir)  # once, for the table and the forecast
    comparison = compare(runs, cfg)
    comp_paths = write_comparison(comparison, out)
    fc_paths = write_forecast(forecast(runs, cfg), out)
    print(compare_summary(comparison, [*comp_paths.values(), *fc_paths.values()]))

