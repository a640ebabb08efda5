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
