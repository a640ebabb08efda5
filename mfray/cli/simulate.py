"""``mfray simulate | plan | probe | sweep | bench | demo``: the commands that run simulations."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from mfray.cli.shortcuts import overrides
from mfray.errors import MfrayError

if TYPE_CHECKING:
    from mfray.config import RunConfig

NO_DATA = "no data: pass --data DIR (a converted dataset) or set sim.data"


def run_config(args: argparse.Namespace) -> RunConfig:
    """The run config of ``--config`` with the command's ``--set`` and shortcuts applied."""
    from mfray.config import load_config

    cfg = load_config(args.config, overrides(args, args.command))
    check_adapter_form(cfg)
    return cfg


def check_adapter_form(cfg: RunConfig) -> None:
    """Refuse a policy adapter (or prompt classifier) tuned on another form of the numeric mean
    field than the run shows (``sim.meanfield_form``): it learnt to read the other one. The
    form is in the ``train_config.json`` that ``mfray train`` writes beside it."""
    from mfray.llm.classifier import classifier_path

    tuned_by = cfg.policy.adapter or classifier_path(cfg.policy.model)
    if not tuned_by:
        return
    saved = Path(tuned_by).parent / "train_config.json"
    if not saved.is_file():
        return
    from mfray.config_migrate import stored_config
    from mfray.train.config import TrainConfig
    from mfray.variants import variant

    tuned = stored_config(TrainConfig, json.loads(saved.read_text()), saved)
    form, size = tuned.sim.meanfield_form, tuned.sim.tally_size
    numeric = variant(tuned.train.variant).shows_numeric
    if numeric and form != cfg.sim.meanfield_form:
        raise MfrayError(f"{tuned_by} was tuned on the mean field written as "
                         f"{form!r}; this run writes it as {cfg.sim.meanfield_form!r}: add "
                         f"--set sim.meanfield_form={form}")
    if numeric and form == "tally" and size != cfg.sim.tally_size:
        raise MfrayError(f"{tuned_by} was tuned on the mean field written as "
                         f"{size} reactions; this run writes {cfg.sim.tally_size}: add "
                         f"--set sim.tally_size={size}")


def check_out(out: str) -> None:
    """Refuse, before anything slow, a run directory that holds something or that cannot be
    created (the store checks again when it creates the run)."""
    path = Path(out).expanduser().absolute()
    if path.exists() and not path.is_dir():
        raise MfrayError(f"--out {out} exists and is not a directory")
    if (path / "runs.parquet").exists():
        raise MfrayError(f"--out {out} already holds a run; pass --resume {out} to continue "
                         "it or choose another output directory")
    parent = next(p for p in (path, *path.parents) if p.exists())
    try:
        if parent == path and any(path.iterdir()):
            raise MfrayError(f"--out {out} exists and is not empty; choose another output "
                             "directory")
        # a real try, not os.access: root passes every permission check, but not a read-only
        # file system or /proc
        tempfile.TemporaryDirectory(dir=parent, prefix=".mfray-probe-").cleanup()
    except OSError as exc:
        raise MfrayError(f"--out {out}: cannot write in {parent} "
                         f"({exc.strerror or exc})") from None


def resumed_config(args: argparse.Namespace, stored: dict, where: Path) -> RunConfig:
    """The stored config of a run to resume, with the command's ``resources.*`` overrides
    (where it runs, which does not change results). Any other flag would change the run and
    is refused, by name."""
    from mfray.cli.shortcuts import COMMAND_SHORTCUTS, SHORTCUTS
    from mfray.config import RunConfig, parse_override
    from mfray.config_migrate import stored_config

    given = overrides(args, "simulate")
    changing = [f"--set {o}" for o in args.set or [] if parse_override(o)[0][0] != "resources"]
    changing += [f"{flag} {getattr(args, SHORTCUTS[flag].dest)}"
                 for flag in COMMAND_SHORTCUTS["simulate"]
                 if getattr(args, SHORTCUTS[flag].dest, None) is not None
                 and not SHORTCUTS[flag].key.startswith("resources.")]
    changing += [f"{flag} {value}" for flag, value in (("--config", args.config),
                                                         ("--out", args.out)) if value]
    if changing:
        raise MfrayError(f"--resume continues {args.resume} as it began; "
                         f"{', '.join(changing)} would change it. Drop them, or start a new "
                         "run with --out (only resources.* may change on a resume)")
    data = json.loads(json.dumps(stored))
    for text in given:
        keys, value = parse_override(text)
        data.setdefault(keys[0], {})[keys[-1]] = value
    return stored_config(RunConfig, data, where)


def cmd_simulate(args: argparse.Namespace) -> None:
    # the arguments and --out first: they need nothing slow; then a line at once, since
    # reading the data and starting Ray take seconds to a minute
    if not args.resume and not args.out:
        raise MfrayError("simulate needs --out RUN_DIR (or --resume RUN_DIR)")
    if not args.resume:
        check_out(args.out)
    run_dir = args.resume or args.out
    print(f"mfray simulate: {run_dir}: reading the config and the data",
          file=sys.stderr, flush=True)
    data = None
    if args.resume:
        from mfray.store import RunStore

        store = RunStore.open(args.resume)
        cfg = resumed_config(args, store.config(), store.run_dir / "config.json")
        data = (store.data_identity() or {}).get("path")
        if data and not Path(data).is_dir():
            raise MfrayError(f"{args.resume} ran on {data}, which is not there any more; "
                             "put the dataset back there to resume")
    else:
        cfg = run_config(args)
    if not cfg.sim.data:
        raise MfrayError(NO_DATA)
    from mfray.data.schema import read_dataset
    from mfray.engine import simulate

    store = simulate(cfg, read_dataset(data or cfg.sim.data), run_dir,
                     resume=bool(args.resume), max_rounds=args.max_rounds)
    info = store.run_info()
    print(f"run {info['run_id']} {info['status']}: {len(store.completed_rounds())} rounds "
          f"in {run_dir}")


#: what ``mfray validate`` sets against the plain readings when --variants is not given
VALIDATE_VARIANTS = "persistence,crowd,mf-cal"


def cmd_validate(args: argparse.Namespace) -> None:
    from mfray.data.schema import read_dataset
    from mfray.validate import ValidateSettings, summary, validate

    args.variants = args.variants or VALIDATE_VARIANTS
    cfg = run_config(args)
    if not cfg.sim.data:
        raise MfrayError(NO_DATA)
    tuned = []
    for item in args.tuned:
        name, eq, pattern = item.partition("=")
        if not eq or "{event}" not in pattern:
            raise MfrayError(f"--tuned {item!r}: use VARIANT=PATTERN with {{event}} in it")
        tuned.append((name, pattern))
    settings = ValidateSettings(copies=args.copies, copy_seeds=tuple(ints(args.copy_seeds,
                                "--copy-seeds")), alpha=args.alpha, mix_seed=args.mix_seed,
                                synthetic=args.synthetic, tuned=tuple(tuned))
    tables = validate(cfg, read_dataset(cfg.sim.data), args.out, settings)
    print(summary(tables, Path(args.out)))


def ints(text: str, flag: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",")]
    except ValueError:
        raise MfrayError(f"{flag}: expected integers such as 1,10,100, got {text!r}") from None


def cmd_plan(args: argparse.Namespace) -> None:
    from mfray.plan import make_candidates, plan, plan_markdown

    dim, sep, label = args.target.partition("=")
    if not sep or not dim or not label:
        raise MfrayError(f"--target: expected DIMENSION=LABEL such as stance=deny, got "
                         f"{args.target!r}")
    texts = args.texts.split("|") if args.texts else [None]
    options = make_candidates(ints(args.rounds, "--rounds"), ints(args.counts, "--counts"),
                              args.labels.split(","), texts, dimension=dim)
    rows = plan(run_config(args), args.out, (dim, label), lower=args.lower,
                candidates=options, top=args.top)
    print(plan_markdown(rows, (dim, label), args.lower, args.top))
    print(f"wrote {args.out}/plan.md, plan.csv, plan.png; the run is {args.out}/run")


def cmd_probe(args: argparse.Namespace) -> None:
    from mfray.data.schema import read_dataset
    from mfray.llm.build import build_model
    from mfray.probe import probe

    cfg = run_config(args)
    if not cfg.sim.data:
        raise MfrayError(NO_DATA)
    model = build_model(cfg.policy, cfg.sim.data, resources=cfg.resources)
    if args.drift:
        from mfray.probe import drift

        ds = read_dataset(cfg.sim.data)
        for name in args.drift.split(","):
            print(drift(model, ds, cfg.sim, name, rounds=args.rounds,
                        start_weight=args.start_weight).markdown() + "\n")
        return
    result = probe(model, read_dataset(cfg.sim.data), cfg.sim, n=args.n, strength=args.strength)
    print(f"mean probabilities of {args.n} real agents' options when the mean field shows "
          f"{args.strength:.0%} of one option:\n")
    print(result.markdown())


def cmd_sweep(args: argparse.Namespace) -> None:
    from mfray.sweep import load_sweep, sweep

    rows = sweep(load_sweep(args.config), args.out, data=args.data)
    print((Path(args.out) / "sweep.md").read_text(encoding="utf-8"))
    print(f"{len({r['trial'] for r in rows})} trials; wrote {args.out}/sweep.parquet, "
          f"sweep.md, sweep.png")


def cmd_bench(args: argparse.Namespace) -> None:
    from mfray.bench import (
        bench_model,
        bench_scripted,
        format_model_bench,
        reference_loop,
        side_by_side,
    )

    sims = ints(args.simulations, "--simulations") if args.simulations else None
    if args.workload in ("scripted", "distilled"):
        if args.reference:
            raise MfrayError("bench: --reference goes with the 'model' workload")
        if (args.workload == "distilled") != bool(args.model):
            raise MfrayError("bench: --model names the distilled policy's directory, for the "
                             "'distilled' workload only")
        result = bench_scripted(max(sims or [1000]), args.agents or 160, shards=args.shards,
                                model=args.model or "scripted", data=args.data,
                                **({"wave_agents": args.wave_agents} if args.wave_agents else {}))
    else:
        # the reference first, alone on the machine, then mfray
        ref = reference_loop(Path(args.reference), args.model, args.reference_rounds) \
            if args.reference else None
        result = bench_model(args.model, sims or (1, 10, 100), args.agents or 32,
                             batch_size=args.batch_size, bf16=args.bf16, mode=args.mode,
                             max_batch_tokens=args.max_batch_tokens)
        if ref:
            result = side_by_side(result, ref)
        print(format_model_bench(result))
    print(json.dumps(result, indent=2))


def cmd_demo(args: argparse.Namespace) -> None:
    from mfray.demo import run_demo

    run_demo(Path(args.out), model=args.model)
