"""The ``mfray`` command line: parse, load config, call the library. No logic lives here.

Every error mfray anticipates (bad data, bad config, a run directory in the wrong state) ends in
one line ``mfray: error: …`` on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from mfray.data.mix import CENTRES
from mfray.data.topics import EARLIEST, retopic
from mfray.data.topics import RULES as TOPIC_RULES
from mfray.errors import MfrayError
from mfray.meanfield import TALLY_SIZE

if TYPE_CHECKING:
    from mfray.config import RunConfig
    from mfray.data.schema import Dataset

FORMATS = ("rumoureval", "rumdect", "jsonl")


def _load(src: str, fmt: str) -> Dataset:
    """The dataset at ``src`` (a folder, a file, or an archive of either) in format ``fmt``."""
    from mfray.data.archive import is_archive, load_archive

    if not Path(src).exists():
        raise MfrayError(f"{src}: no such file or directory")
    if fmt == "rumoureval":
        from mfray.data.rumoureval import load_rumoureval as load
    elif fmt == "rumdect":
        from mfray.data.rumdect import load_rumdect as load
    else:
        from mfray.data.jsonl import load_jsonl as load
    return load_archive(src, load) if is_archive(src) else load(src)


def cmd_data_convert(args: argparse.Namespace) -> None:
    from mfray.data.schema import write_dataset

    t0 = time.perf_counter()
    ds = _load(args.src, args.format)
    if args.topic_rule != EARLIEST:
        ds = retopic(ds, args.topic_rule)
    out = write_dataset(ds, args.out)
    print(f"converted {ds.events.num_rows} events, {ds.posts.num_rows} posts into {out} "
          f"in {time.perf_counter() - t0:.1f} s")


def format_info(info: dict) -> str:
    """``mfray data info`` as text: counts, label distributions, replies per event."""
    lines = [(f"dataset {info['name']}: {info['events']} events, {info['threads']} threads, "
              f"{info['posts']} posts ({info['replies']} replies)")]
    for dim, counts in info["labels"].items():
        total = sum(counts.values()) or 1
        parts = ", ".join(f"{k} {v} ({v / total:.1%})" for k, v in counts.items())
        lines.append(f"labels {dim}: {parts}")
    lines.append(f"{'event':<24} {'split':<6} {'threads':>7} {'posts':>6} {'replies':>7}")
    for e in info["per_event"]:
        lines.append(f"{e['event_id']:<24} {e['split'] or '-':<6} {e['threads']:>7} "
                     f"{e['posts']:>6} {e['replies']:>7}")
    return "\n".join(lines)


def cmd_data_info(args: argparse.Namespace) -> None:
    from mfray.data.schema import dataset_info, read_dataset

    info = dataset_info(read_dataset(args.dir))
    print(json.dumps(info, indent=2) if args.json else format_info(info))


def cmd_data_synth(args: argparse.Namespace) -> None:
    from mfray.data.schema import write_dataset
    from mfray.data.synthetic import WorldParams, generate

    try:
        params = WorldParams(n_events=args.events, herding=args.herding,
                             event_spread=args.spread, seed=args.seed,
                             min_agents=args.min_agents, max_agents=args.max_agents,
                             warmup=args.warmup)
    except ValueError as exc:
        raise MfrayError(f"synthetic world: {exc}") from None
    _, ds = generate(params)
    out = write_dataset(ds, args.out)
    print(f"synthetic world: {ds.events.num_rows} events, {ds.posts.num_rows} posts in {out}")


def cmd_data_mix(args: argparse.Namespace) -> None:
    from mfray.data.mix import mix_events, reply_mix, source_event
    from mfray.data.schema import read_dataset, write_dataset

    ds = read_dataset(args.dir)
    events = args.events.split(",") if args.events else ds.event_ids()
    mixed, ids = mix_events(ds, events, args.copies, alpha=args.alpha, seed=args.seed,
                            dimension=args.dimension, min_agents=args.min_agents,
                            centre=args.centre)
    if not ids:
        raise MfrayError(f"no copy has {args.min_agents} replies: the events' label counts "
                         "cannot fill one (lower --min-agents or raise --alpha)")
    out = write_dataset(mixed, args.out)
    dim = args.dimension or next(iter(ds.label_space))
    options = list(ds.label_space[dim])
    print(f"{len(ids)} resampled copies of {len(events)} event(s) in {out} "
          f"(the {ds.events.num_rows} events of {args.dir} kept); {dim} shares of the replies:")
    print(f"{'event':<30} {'replies':>7} " + " ".join(f"{o:>8}" for o in options))
    for event in dict.fromkeys(events):  # each event, then its new copies
        for name in (event, *(i for i in ids if source_event(i) == event)):
            counts = reply_mix(mixed, name, dim)
            shares = " ".join(f"{c / max(counts.sum(), 1):>8.0%}" for c in counts)
            print(f"{name:<30} {counts.sum():>7} {shares}")


def _run_config(args: argparse.Namespace) -> RunConfig:
    """The run config of ``--config`` with the command's flags and ``--set`` applied."""
    from mfray.config import load_config

    overrides = list(args.set or [])
    for flag, key in (("data", "sim.data"), ("model", "policy.model"),
                      ("url", "policy.url"), ("shards", "resources.num_shards"),
                      ("policy_adapter", "policy.adapter"),
                      ("meanfield_adapter", "meanfield.adapter")):
        if getattr(args, flag, None) is not None:
            overrides.append(f"{key}={getattr(args, flag)}")
    if getattr(args, "variants", None):
        overrides.append(f"sim.variants=[{args.variants}]")
    cfg = load_config(args.config, overrides)
    _check_adapter_form(cfg)
    return cfg


def _check_adapter_form(cfg: RunConfig) -> None:
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
    from mfray.variants import known, variant

    tuned = json.loads(saved.read_text())
    name = tuned.get("train", {}).get("variant")
    numeric = known(name) and variant(name).shows_numeric
    form = tuned.get("sim", {}).get("meanfield_form", "shares")
    if numeric and form != cfg.sim.meanfield_form:
        raise MfrayError(f"{tuned_by} was tuned on the mean field written as "
                         f"{form!r}; this run writes it as {cfg.sim.meanfield_form!r}: add "
                         f"--set sim.meanfield_form={form}")
    size = tuned.get("sim", {}).get("tally_size", TALLY_SIZE)
    if numeric and form == "tally" and size != cfg.sim.tally_size:
        raise MfrayError(f"{tuned_by} was tuned on the mean field written as "
                         f"{size} reactions; this run writes {cfg.sim.tally_size}: add "
                         f"--set sim.tally_size={size}")


def _ints(text: str, flag: str) -> list[int]:
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
    options = make_candidates(_ints(args.rounds, "--rounds"), _ints(args.counts, "--counts"),
                              args.labels.split(","), texts, dimension=dim)
    rows = plan(_run_config(args), args.out, (dim, label), lower=args.lower,
                candidates=options, top=args.top)
    print(plan_markdown(rows, (dim, label), args.lower, args.top))
    print(f"wrote {args.out}/plan.md, plan.csv, plan.png; the run is {args.out}/run")


def cmd_probe(args: argparse.Namespace) -> None:
    from mfray.data.schema import read_dataset
    from mfray.llm.build import build_model
    from mfray.probe import probe

    cfg = _run_config(args)
    if not cfg.sim.data:
        raise MfrayError("no data: pass --data DIR (a converted dataset) or set sim.data")
    result = probe(build_model(cfg.policy, cfg.sim.data), read_dataset(cfg.sim.data), cfg.sim,
                   n=args.n, strength=args.strength)
    print(f"mean probabilities of {args.n} real agents' options when the mean field shows "
          f"{args.strength:.0%} of one option:\n")
    print(result.markdown())


def cmd_simulate(args: argparse.Namespace) -> None:
    from mfray.config import RunConfig, from_dict
    from mfray.data.schema import read_dataset
    from mfray.engine import simulate
    from mfray.store import RunStore

    if args.resume:
        cfg = from_dict(RunConfig, RunStore.open(args.resume).config())
        run_dir = args.resume
    else:
        if not args.out:
            raise MfrayError("simulate needs --out RUN_DIR (or --resume RUN_DIR)")
        cfg = _run_config(args)
        run_dir = args.out
    if not cfg.sim.data:
        raise MfrayError("no data: pass --data DIR (a converted dataset) or set sim.data")
    store = simulate(cfg, read_dataset(cfg.sim.data), run_dir, resume=bool(args.resume),
                     max_rounds=args.max_rounds)
    info = store.run_info()
    print(f"run {info['run_id']} {info['status']}: {len(store.completed_rounds())} rounds "
          f"in {run_dir}")


def cmd_evaluate(args: argparse.Namespace) -> None:
    from mfray.config import EvalConfig
    from mfray.evaluate.effects import format_effects, intervention_effects
    from mfray.evaluate.report import evaluate, format_reference_fits, markdown_table, write_report
    from mfray.store import RunStore

    ev = evaluate(args.run_dir, EvalConfig(source=args.source))
    paths = write_report(ev, args.out or Path(args.run_dir) / "eval")
    for dim in ev.label_space:
        print(f"\n{dim} — mean over events [95% bootstrap interval], rollout agents only "
              f"(simulated distribution from {args.source})\n")
        print(markdown_table(ev.summary, dim))
    fits = RunStore.open(args.run_dir).read_references()
    if fits.num_rows:
        print("\nreferences, fitted on the training events (references.parquet)\n")
        print(format_reference_fits(fits))
    effects = intervention_effects(args.run_dir)
    if effects:
        print("\nintervention effects (treated − untouched twin, same seeds), decisions after "
              "the intervention round\n")
        print(format_effects(effects))
    print(f"\nwrote {', '.join(str(p) for p in paths.values())}")


def cmd_bench(args: argparse.Namespace) -> None:
    from mfray.bench import bench_model, bench_scripted, format_model_bench

    sims = _ints(args.simulations, "--simulations") if args.simulations else None
    if args.workload == "scripted":
        result = bench_scripted(max(sims or [1000]), args.agents or 160, shards=args.shards)
    else:
        result = bench_model(args.model, sims or (1, 10, 100), args.agents or 32,
                             batch_size=args.batch_size, bf16=args.bf16, mode=args.mode,
                             max_batch_tokens=args.max_batch_tokens)
        print(format_model_bench(result))
    print(json.dumps(result, indent=2))


def cmd_sweep(args: argparse.Namespace) -> None:
    from mfray.sweep import load_sweep, sweep

    rows = sweep(load_sweep(args.config), args.out, data=args.data)
    print((Path(args.out) / "sweep.md").read_text(encoding="utf-8"))
    print(f"{len({r['trial'] for r in rows})} trials; wrote {args.out}/sweep.parquet, "
          f"sweep.md, sweep.png")


def cmd_compare(args: argparse.Namespace) -> None:
    from mfray.config import EvalConfig
    from mfray.evaluate.compare import compare, forecast, write_comparison, write_forecast
    from mfray.evaluate.report import parse_run, read_runs

    cfg = EvalConfig(source=args.source)
    out = Path(args.out or parse_run(args.run_dir[0])[0] / "compare")
    runs = read_runs(args.run_dir)  # once, for the table and the forecast
    comp_paths = write_comparison(compare(runs, cfg), out)
    fc_paths = write_forecast(forecast(runs, cfg), out)
    print(comp_paths["markdown"].read_text())
    print(f"wrote {', '.join(str(p) for p in [*comp_paths.values(), *fc_paths.values()])}")


def cmd_labels_check(args: argparse.Namespace) -> None:
    from mfray.data.schema import read_dataset
    from mfray.labels import (
        HumanLabeller,
        OpenAICompatibleLabeller,
        ZeroShotLabeller,
        format_check,
        human_labels,
        labels_check,
    )

    ds = read_dataset(args.dir)
    if args.labeller == "human":
        labeller = HumanLabeller(human_labels(ds))
    elif args.labeller == "openai":
        if not (args.url and args.model):
            raise MfrayError("the openai labeller needs --url BASE_URL and --model NAME "
                             "(the key comes from $OPENAI_API_KEY)")
        labeller = OpenAICompatibleLabeller(args.url, args.model)
    else:
        from mfray.llm import load_model

        model = load_model(args.model)
        labeller = ZeroShotLabeller(model, chat=bool(getattr(model.tokenizer, "chat_template",
                                                             None)))
    events = args.events.split(",") if args.events else None
    print(format_check(labels_check(ds, labeller, events=events, dimension=args.dimension)))


def cmd_demo(args: argparse.Namespace) -> None:
    from mfray.demo import run_demo

    run_demo(Path(args.out), model=args.model)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mfray", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="convert and inspect datasets").add_subparsers(
        dest="data_command", required=True)
    c = data.add_parser("convert", help="convert a dataset in a known format to Parquet")
    c.add_argument("src", help="a folder or file, or a .zip, .tar, .tar.gz/.tgz, .tar.bz2 or "
                   ".tar.xz archive of one (unpacked safely into a temporary folder)")
    c.add_argument("--format", required=True, choices=FORMATS)
    c.add_argument("--out", required=True)
    c.add_argument("--topic-rule", choices=TOPIC_RULES, default=EARLIEST,
                   help="how an event without topic text gets one from its source posts: the "
                   "earliest one (default) or the one whose words the others share most")
    c.set_defaults(func=cmd_data_convert)
    i = data.add_parser("info", help="counts and label distributions of a converted dataset")
    i.add_argument("dir")
    i.add_argument("--json", action="store_true")
    i.set_defaults(func=cmd_data_info)
    s = data.add_parser("synth", help="generate a synthetic world with known dynamics")
    s.add_argument("--out", required=True)
    s.add_argument("--events", type=int, default=12)
    s.add_argument("--herding", type=float, default=2.0)
    s.add_argument("--spread", type=float, default=0.8)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--min-agents", type=int, default=120)
    s.add_argument("--max-agents", type=int, default=240)
    s.add_argument("--warmup", type=int, default=50,
                   help="warm-up agents assumed by the stored effect sizes")
    s.set_defaults(func=cmd_data_synth)
    m = data.add_parser("mix", help="add copies of events resampled to other label mixes "
                        "(base-rate shift: see mfray/data/mix.py)")
    m.add_argument("dir", help="a converted dataset")
    m.add_argument("--out", required=True)
    m.add_argument("--events", help="comma-separated event ids (default: every event)")
    m.add_argument("--copies", type=int, default=4, help="copies per event (default 4)")
    m.add_argument("--alpha", type=float, default=1.0,
                   help="Dirichlet concentration of the drawn mixes (default 1: any mix)")
    m.add_argument("--centre", choices=CENTRES, default="uniform",
                   help="mean of the drawn mixes: uniform (default), or the pooled reply mix "
                   "of --events, which copies then scatter around")
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--dimension", help="the label dimension to resample (default: the first)")
    m.add_argument("--min-agents", type=int, default=80,
                   help="fewest replies a copy may have; smaller draws are redrawn (default 80, "
                   "sim.min_replies' default)")
    m.set_defaults(func=cmd_data_mix)

    sim = sub.add_parser("simulate", help="run simulations on Ray (LLM and model-free variants)")
    sim.add_argument("--data", help="a converted dataset directory")
    sim.add_argument("--out", help="the run directory to create")
    sim.add_argument("--config", help="a TOML or YAML config file")
    sim.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE",
                     help="override one config value (repeatable); --section.key=value too")
    sim.add_argument("--variants", help="comma-separated variants, e.g. state,mf,base-rate")
    sim.add_argument("--model", help="policy model: a transformers directory, a .gguf file, "
                     "'scripted' or 'scripted-world' (default: SmolLM2-135M-Instruct); with "
                     "--url, the name the endpoint serves")
    sim.add_argument("--url", help="an OpenAI-compatible endpoint serving the policy, e.g. "
                     "http://127.0.0.1:8000/v1 (key from $OPENAI_API_KEY)")
    sim.add_argument("--policy-adapter", help="a LoRA adapter from `mfray train policy`")
    sim.add_argument("--meanfield-adapter",
                     help="a LoRA adapter from `mfray train meanfield` (text mean field)")
    sim.add_argument("--shards", type=int, help="number of AgentShard actors")
    sim.add_argument("--max-rounds", type=int, help="stop after this many rounds (resumable)")
    sim.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run")
    sim.set_defaults(func=cmd_simulate)

    ev = sub.add_parser("evaluate", help="compare a run with reality: tables and a plot")
    ev.add_argument("run_dir")
    ev.add_argument("--from", dest="source", choices=("probs", "labels"), default="probs",
                    help="simulated distribution from action probabilities or sampled labels")
    ev.add_argument("--out", help="report directory (default RUN_DIR/eval)")
    ev.set_defaults(func=cmd_evaluate)

    lab = sub.add_parser("labels", help="labellers").add_subparsers(dest="labels_command",
                                                                    required=True)
    lc = lab.add_parser("check", help="agreement of a labeller with the human labels")
    lc.add_argument("dir", help="a converted dataset with human labels")
    lc.add_argument("--labeller", choices=("zero-shot", "openai", "human"), default="zero-shot")
    lc.add_argument("--model", help="zero-shot: a local model (default SmolLM2); openai: its name")
    lc.add_argument("--url", help="openai: the endpoint's base URL, e.g. http://127.0.0.1:8000/v1")
    lc.add_argument("--events", help="comma-separated event ids (default: all)")
    lc.add_argument("--dimension", default="stance")
    lc.set_defaults(func=cmd_labels_check)

    cp = sub.add_parser("compare", help="the paper's comparison table and the forecasting "
                        "report of a run, or of several runs read as one")
    cp.add_argument("run_dir", nargs="+", metavar="RUN_DIR[:old=new,...]",
                    help="run directories; ':state=sft' renames a run's variant (e.g. a run "
                    "with a tuned adapter beside the untuned one)")
    cp.add_argument("--from", dest="source", choices=("probs", "labels"), default="probs")
    cp.add_argument("--out", help="report directory (default: the first RUN_DIR/compare)")
    cp.set_defaults(func=cmd_compare)

    b = sub.add_parser("bench", help="measure end-to-end throughput (see mfray/bench.py)")
    b.add_argument("workload", choices=("scripted", "model"))
    b.add_argument("--simulations", help="concurrent simulations; for 'model' a comma list, "
                   "the scaling curve (default 1,10,100)")
    b.add_argument("--agents", type=int, help="agents per simulation (rounds of 16)")
    b.add_argument("--shards", type=int, default=1)
    b.add_argument("--model", help="for 'model': the policy model (default SmolLM2)")
    b.add_argument("--batch-size", type=int, default=64)
    b.add_argument("--max-batch-tokens", type=int,
                   help="padded tokens per model batch (default: policy.max_batch_tokens's)")
    b.add_argument("--bf16", choices=("auto", "on", "off"), default="auto")
    b.add_argument("--mode", choices=("choice", "text"), default="choice")
    b.set_defaults(func=cmd_bench)

    pl = sub.add_parser("plan", help="search interventions for the one that best moves a "
                        "target share, each against its twin (see mfray/plan.py)")
    pl.add_argument("--out", required=True, help="the plan directory (rerun to resume)")
    pl.add_argument("--data", help="a converted dataset directory")
    pl.add_argument("--config", help="a TOML or YAML run config")
    pl.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE")
    pl.add_argument("--variants", help="comma-separated variants (default: the config's)")
    pl.add_argument("--model", help="policy model (as for simulate)")
    pl.add_argument("--target", required=True, help="DIMENSION=LABEL, e.g. stance=deny")
    pl.add_argument("--lower", action="store_true", help="lower the share (default: raise)")
    pl.add_argument("--rounds", required=True, help="after which rounds, e.g. 2,4")
    pl.add_argument("--counts", required=True, help="how many posts, e.g. 8,32")
    pl.add_argument("--labels", required=True, help="their labels, e.g. deny,query")
    pl.add_argument("--texts", help="their texts, separated by |, e.g. 'Fake.|Source?'")
    pl.add_argument("--top", type=int, default=5, help="candidates in the report")
    pl.set_defaults(func=cmd_plan)

    pr = sub.add_parser("probe", help="does the policy read the mean field? (see "
                        "mfray/probe.py)")
    pr.add_argument("--data", help="a converted dataset directory (agents are drawn from it)")
    pr.add_argument("--config", help="a TOML or YAML run config")
    pr.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE")
    pr.add_argument("--model", help="policy model (as for simulate)")
    pr.add_argument("--policy-adapter", help="a LoRA adapter from `mfray train policy`")
    pr.add_argument("--n", type=int, default=24, help="real agents to show")
    pr.add_argument("--strength", type=float, default=0.85,
                    help="share of the favoured option in the mean field shown")
    pr.set_defaults(func=cmd_probe)

    sw = sub.add_parser("sweep", help="a grid of configs and synthetic worlds on Ray Tune "
                        "(see mfray/sweep.py); rerun to resume")
    sw.add_argument("--config", required=True, help="the sweep file (base, world, space)")
    sw.add_argument("--out", required=True)
    sw.add_argument("--data", help="a converted dataset (when the sweep has no world)")
    sw.set_defaults(func=cmd_sweep)

    tr = sub.add_parser("train", help="IB-Tune: LoRA fine-tuning on Ray Train (classifier: "
                        "a bag-of-words reference fitted on the same examples)")
    tr.add_argument("kind", choices=("policy", "meanfield", "classifier"))
    tr.add_argument("--out", required=True, help="the training directory (rerun to resume)")
    tr.add_argument("--config", help="a TOML or YAML config (sections sim, policy, meanfield, "
                    "train, resources)")
    tr.add_argument("--data", help="a converted dataset directory")
    tr.add_argument("--model", help="the base model (default SmolLM2-135M-Instruct)")
    tr.add_argument("--variant", help="whose prompts: mf, mf-text, sft (state prompts), ...")
    tr.add_argument("--held-out", help="comma-separated events never read (leave-one-out)")
    tr.add_argument("--workers", type=int, help="Ray Train workers (0: in-process)")
    tr.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE",
                    help="override one config value (repeatable); --section.key=value too")
    tr.set_defaults(func=cmd_train)

    d = sub.add_parser("demo", help="synthetic world -> simulations -> store -> evaluation")
    d.add_argument("--out", default="runs/demo")
    d.add_argument("--model", help="policy model (default SmolLM2; 'scripted-world' is instant)")
    d.set_defaults(func=cmd_demo)
    return p


def cmd_train(args: argparse.Namespace) -> None:
    from mfray.config import load_config
    from mfray.train.config import TrainConfig
    from mfray.train.run import loss_summary, train, train_classifier, validation_summary

    overrides = list(args.set or [])
    for flag, key in (("data", "sim.data"), ("model", "policy.model"),
                      ("variant", "train.variant"), ("workers", "train.num_workers")):
        if getattr(args, flag) is not None:
            overrides.append(f"{key}={getattr(args, flag)}")
    if args.held_out:
        overrides.append(f"train.held_out=[{args.held_out}]")
    cfg = load_config(args.config, overrides, cls=TrainConfig)
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


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # `mfray simulate --sim.round_size=8` is `--set sim.round_size=8`
    dotted = [a[2:] for a in extra if a.startswith("--") and "=" in a and "." in a.split("=")[0]]
    if args.command not in ("simulate", "train", "plan", "probe") and extra or len(dotted) != len(extra):
        parser.error(f"unrecognized arguments: {' '.join(a for a in extra if a[2:] not in dotted)}")
    if dotted:
        args.set = [*(args.set or []), *dotted]
    try:
        args.func(args)
    except MfrayError as exc:
        print(f"mfray: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mfray: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
