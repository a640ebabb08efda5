"""``mfray train policy | meanfield | classifier``: IB-Tune on Ray Train."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from mfray.cli.shortcuts import overrides
from mfray.errors import MfrayError


def cmd_train(args: argparse.Namespace) -> None:
    from mfray.config import load_config
    from mfray.train.config import TrainConfig
    from mfray.train.run import loss_summary, train, train_classifier, validation_summary

    cfg = load_config(args.config, overrides(args, "train"), cls=TrainConfig)
    if not cfg.sim.data:
        raise MfrayError("no data: pass --data DIR (a converted dataset) or set sim.data")
    if args.kind == "classifier":
        path = train_classifier(cfg, args.out)
        print(f"classifier: {path} (simulate with --set policy.model={args.out})")
        report = Path(args.out) / "validation.json"
        if report.is_file():
            print(validation_summary(json.loads(report.read_text())))
        return
    adapter = train(cfg, args.kind, args.out)
    out = Path(args.out)
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    last = history[-1]
    skipped = last.get("skipped_steps", 0)
    print(f"adapter: {adapter}\nsteps {last['step']}, {loss_summary(history)}, "
          f"{last['examples_per_s']:.1f} examples/s\nloss curve: {out / 'loss.png'}"
          + (f"\n{skipped} step(s) skipped: non-finite gradient (metrics.jsonl)"
             if skipped else ""))
    if (out / "validation.json").is_file():
        print(validation_summary(json.loads((out / "validation.json").read_text())))


def cmd_distill(args: argparse.Namespace) -> None:
    from mfray.distill import distill

    if args.simulate and (Path(args.out) / "run").exists():  # said before the fit, not after
        raise MfrayError(f"{Path(args.out) / 'run'} holds the simulation of an earlier fit: "
                         "remove it, or distill into another --out")
    path, report = distill(args.run_dir, args.out, heldout=args.heldout)
    print(f"distilled policy: {path} (simulate with --set policy.model={args.out})")
    for row in report:
        print(f"  {'/'.join(row['options'])}: {row['prompts']} distinct prompts; on "
              f"{row['heldout_prompts']} held out, KL(teacher || distilled) "
              f"{row['heldout_kl']:.4f} per decision (the teacher's mean distribution: "
              f"{row['heldout_kl_of_the_mean']:.4f}); L2 weight {row['l2']:g}")
    if args.simulate:
        _simulate_student(args.run_dir, Path(args.out))


def _simulate_student(teacher: str, out: Path) -> None:
    """The teacher's run again with the distilled policy (same events, variants and seeds),
    and the two runs' simulated distributions side by side."""
    from dataclasses import replace

    from mfray.config import RunConfig
    from mfray.config_migrate import stored_config
    from mfray.data.schema import read_dataset
    from mfray.distill import side_by_side
    from mfray.engine import simulate
    from mfray.store import RunStore

    store = RunStore.open(teacher)
    cfg = stored_config(RunConfig, store.config(), store.run_dir / "config.json")
    identity = store.data_identity() or {}
    cfg = replace(cfg, sim=replace(cfg.sim, data=identity.get("path") or cfg.sim.data),
                  policy=replace(cfg.policy, model=str(out.resolve()), adapter=None,
                                 log_prompts=False))
    simulate(cfg, read_dataset(cfg.sim.data), out / "run")
    rows = side_by_side(teacher, out / "run")
    (out / "side_by_side.json").write_text(json.dumps(rows, indent=1))
    print("simulated distributions, teacher against distilled (KL of the distilled one's):")
    for r in rows:
        print(f"  {r['event_id']} {r['variant']} {r['dimension']}: KL {r['kl']:.4f}  "
              f"teacher {[round(x, 3) for x in r['teacher']]}  "
              f"distilled {[round(x, 3) for x in r['student']]}")
    worst = max(r["kl"] for r in rows)
    print(f"largest KL {worst:.4f} over {len(rows)} events × variants ({out / 'side_by_side.json'})")
