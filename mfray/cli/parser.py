"""The ``mfray`` argument parser, built from one table of commands and their flags."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from mfray.cli.data import (
    FORMATS,
    cmd_data_convert,
    cmd_data_info,
    cmd_data_mix,
    cmd_data_synth,
    cmd_labels_check,
)
from mfray.cli.keys import cmd_config
from mfray.cli.report import cmd_compare, cmd_evaluate
from mfray.cli.shortcuts import COMMAND_SHORTCUTS, add_shortcuts
from mfray.cli.simulate import (
    cmd_bench,
    cmd_demo,
    cmd_plan,
    cmd_probe,
    cmd_simulate,
    cmd_sweep,
    cmd_validate,
)
from mfray.cli.train import cmd_distill, cmd_train
from mfray.data.topics import EARLIEST
from mfray.data.topics import RULES as TOPIC_RULES

DESCRIPTION = (
    "mfray simulates how a population of social-media users reacts to an event, each user an "
    "LLM agent that sees the crowd's reactions so far (MF-LLM's mean field), and sets the "
    "simulations against what really happened; it runs many simulations at once on Ray.")
EPILOG = ("`mfray COMMAND --help` shows a command's flags; `mfray config` lists every config "
          "key with its help.")

Arg = tuple[tuple[str, ...], dict[str, Any]]


def arg(*names: str, **options: Any) -> Arg:
    return names, options


CONFIG = arg("--config", help="a TOML or YAML config file (`mfray config` lists its keys)")
SET = arg("--set", action="append", metavar="SECTION.KEY=VALUE",
          help="override one config value (repeatable); --section.key=value too")
FROM = arg("--from", dest="source", choices=("probs", "labels"),
           help="the simulated distribution: from action probabilities or sampled labels "
           "(default: the run's eval.source)")

#: (command words, help, function, flags); ``simulate``, ``plan``, ``probe`` and ``train`` also
#: take the shortcuts of mfray/cli/shortcuts.py
COMMANDS: list[tuple[tuple[str, ...], str, Callable[[argparse.Namespace], None], list[Arg]]] = [
    (("data", "convert"), "convert a dataset in a known format to Parquet", cmd_data_convert, [
        arg("src", help="a folder or file, or a .zip, .tar, .tar.gz/.tgz, .tar.bz2 or .tar.xz "
            "archive of one (unpacked safely into a temporary folder)"),
        arg("--format", required=True, choices=FORMATS),
        arg("--out", required=True),
        arg("--topic-rule", choices=TOPIC_RULES, default=EARLIEST,
            help="how an event without topic text gets one from its source posts: the "
            "earliest one (default) or the one whose words the others share most")]),
    (("data", "info"), "counts and label distributions of a converted dataset",
     cmd_data_info, [arg("dir"), arg("--json", action="store_true")]),
    (("data", "synth"), "generate a synthetic world with known dynamics", cmd_data_synth, [
        arg("--out", required=True), arg("--events", type=int, default=12),
        arg("--herding", type=float, default=2.0), arg("--spread", type=float, default=0.8),
        arg("--seed", type=int, default=0), arg("--min-agents", type=int, default=120),
        arg("--max-agents", type=int, default=240),
        arg("--warmup", type=int, default=50,
            help="warm-up agents assumed by the stored effect sizes")]),
    (("data", "mix"), ("add copies of events resampled to other label mixes (base-rate shift: "
     "see mfray/data/mix.py)"), cmd_data_mix, [
        arg("dir", help="a converted dataset"), arg("--out", required=True),
        arg("--events", help="comma-separated event ids (default: every event)"),
        arg("--copies", type=int, default=4, help="copies per event (default 4)"),
        arg("--alpha", type=float, default=1.0,
            help="Dirichlet concentration of the drawn mixes (default 1: any mix)"),
        arg("--centre", default="uniform",
            help="mean of the drawn mixes: uniform (default), or base-rate: the pooled reply "
            "mix of --events, which copies then scatter around"),
        arg("--seed", type=int, default=0),
        arg("--dimension", help="the label dimension to resample (default: the first)"),
        arg("--min-agents", type=int, default=80,
            help="fewest replies a copy may have; smaller draws are redrawn (default 80, "
            "sim.min_replies' default)"),
        arg("--top-up", action="store_true",
            help="instead of redrawing a small copy, draw replies of the options that run "
            "short again (new ids id~k): every drawn mix is kept, and small events give copies "
            "(mfray validate's copies)")]),
    (("simulate",), "run simulations on Ray (LLM and model-free variants)",
     cmd_simulate, [
        arg("--out", help="the run directory to create"), CONFIG, SET,
        arg("--max-rounds", type=int, help="stop after this many rounds (resumable)"),
        arg("--resume", metavar="RUN_DIR", help="continue an interrupted run")]),
    (("validate",), ("is a simulator any good on this data? leave one event out on the real "
     "events and on resampled copies (other label mixes), every variant against the warm-up's "
     "own mix, the base rate and the sampling floor, with a verdict"), cmd_validate, [
        arg("--out", required=True, help="the validation directory (rerun to resume)"),
        CONFIG, SET,
        arg("--copies", type=int, default=3, help="resampled copies per event (0: none)"),
        arg("--copy-seeds", default="0,1", help="simulation seeds on the copies"),
        arg("--alpha", type=float, default=1.0, help="the copies' mixes ~ Dirichlet(alpha)"),
        arg("--mix-seed", type=int, default=0, help="which mixes are drawn"),
        arg("--synthetic", action="store_true", help="also a synthetic world's events"),
        arg("--tuned", action="append", metavar="VARIANT=PATTERN", default=[],
            help="a tuned variant with one adapter per held-out event, e.g. "
            "sft=runs/loo/{event}/tune-sft/adapter (repeatable)")]),
    (("evaluate",), "compare a run with reality: tables and plots", cmd_evaluate, [
        arg("run_dir"), FROM, arg("--out", help="report directory (default RUN_DIR/eval)")]),
    (("compare",), ("the paper's comparison table and the forecasting report of a run, or of "
     "several runs read as one"), cmd_compare, [
        arg("run_dir", nargs="+", metavar="RUN_DIR[:old=new,...]",
            help="run directories; ':state=sft' renames a run's variant (e.g. a run with a "
            "tuned adapter beside the untuned one); the first run's eval section applies"),
        FROM, arg("--out", help="report directory (default: the first RUN_DIR/compare)")]),
    (("train",), ("IB-Tune: LoRA fine-tuning on Ray Train (classifier: a bag-of-words "
     "reference fitted on the same examples)"), cmd_train, [
        arg("kind", choices=("policy", "meanfield", "classifier")),
        arg("--out", required=True, help="the training directory (rerun to resume)"),
        arg("--config", help="a TOML or YAML config (sections sim, policy, meanfield, train, "
            "resources; `mfray config` lists them)"), SET]),
    (("distill",), ("fit a fast policy to an LLM run's own option probabilities (a run "
     "simulated with --set policy.log_prompts=true)"), cmd_distill, [
        arg("run_dir", help="the teacher: a run of the LLM policy that logged its prompts"),
        arg("--out", required=True, help="where distilled.json goes (policy.model=OUT)"),
        arg("--heldout", type=float, default=0.2, help="the share of the distinct prompts held "
            "out to choose the L2 weight and report the fit (default 0.2)"),
        arg("--simulate", action="store_true", help="then simulate the teacher's run with it "
            "(OUT/run) and print both runs' simulated distributions side by side")]),
    (("plan",), ("search interventions for the one that best moves a target share, each "
     "against its twin (see mfray/plan.py)"), cmd_plan, [
        arg("--out", required=True, help="the plan directory (rerun to resume)"), CONFIG, SET,
        arg("--target", required=True, help="DIMENSION=LABEL, e.g. stance=deny"),
        arg("--lower", action="store_true", help="lower the share (default: raise)"),
        arg("--rounds", required=True, help="after which rounds, e.g. 2,4"),
        arg("--counts", required=True, help="how many posts, e.g. 8,32"),
        arg("--labels", required=True, help="their labels, e.g. deny,query"),
        arg("--texts", help="their texts, separated by |, e.g. 'Fake.|Source?'"),
        arg("--top", type=int, default=5, help="candidates in the report")]),
    (("probe",), "does the policy read the mean field? (see mfray/probe.py)",
     cmd_probe, [
        CONFIG, SET, arg("--n", type=int, default=24, help="real agents to show"),
        arg("--strength", type=float, default=0.85,
            help="share of the favoured option in the mean field shown"),
        arg("--drift", metavar="VARIANT[,VARIANT]",
            help="instead: the closed-loop drift check of these variants (e.g. mf,mf-cal): "
            "how far each moves the mean field from each event's real mix"),
        arg("--rounds", type=int, default=20, help="rounds of the drift check"),
        arg("--start-weight", type=float, help="the drift check's starting mean field, in "
            "decisions (default: all the event's labelled replies, whose mix it is; e.g. "
            "50 = sim.warmup, a warm-up's worth)")]),
    (("sweep",), ("a grid of configs and synthetic worlds on Ray Tune (see mfray/sweep.py); "
     "rerun to resume"), cmd_sweep, [
        arg("--config", required=True, help="the sweep file (base, world, space)"),
        arg("--out", required=True),
        arg("--data", help="a converted dataset (when the sweep has no world)")]),
    (("labels", "check"), "agreement of a labeller with the human labels",
     cmd_labels_check, [
        arg("dir", help="a converted dataset with human labels"),
        arg("--labeller", choices=("zero-shot", "openai", "human"), default="zero-shot"),
        arg("--model", help="zero-shot: a local model (default SmolLM2); openai: its name"),
        arg("--url", help="openai: the endpoint's base URL, e.g. http://127.0.0.1:8000/v1"),
        arg("--events", help="comma-separated event ids (default: all)"),
        arg("--dimension", default="stance")]),
    (("bench",), "measure end-to-end throughput (see mfray/bench.py)", cmd_bench, [
        arg("workload", choices=("scripted", "distilled", "model")),
        arg("--simulations", help="concurrent simulations; for 'model' a comma list, the "
            "scaling curve (default 1,10,100)"),
        arg("--agents", type=int, help="agents per simulation (rounds of 16)"),
        arg("--shards", type=int, default=1),
        arg("--model", help="for 'model': the policy model (default SmolLM2); for "
            "'distilled': the distilled policy's directory (mfray distill)"),
        arg("--data", help="scripted, distilled: a synthetic world of --simulations events "
            "of --agents each, instead of generating one"),
        arg("--wave-agents", type=int, help="scripted, distilled: resources.wave_agents"),
        arg("--batch-size", type=int, default=64),
        arg("--max-batch-tokens", type=int,
            help="padded tokens per model batch (default: resources.max_batch_tokens's)"),
        arg("--bf16", choices=("auto", "on", "off"), default="auto"),
        arg("--mode", choices=("choice", "text"), default="choice"),
        arg("--reference", help="for 'model': also run the MF-LLM authors' loop structure "
            "(../shared/bench/reference_loop.py) on the same model, side by side, and print "
            "mfray's speed-up over it"),
        arg("--reference-rounds", type=int, default=2,
            help="rounds of 16 for the reference loop")]),
    (("config",), "every config key with its type, default and help", cmd_config, [
        arg("section", nargs="?", help="one section: sim, policy, meanfield, eval, resources "
            "or train (default: all)"),
        arg("--markdown", action="store_true",
            help="all of it as Markdown (docs/configuration.md)")]),
    (("demo",), "synthetic world -> simulations -> store -> evaluation", cmd_demo, [
        arg("--out", default="runs/demo"),
        arg("--model", help="policy model (default SmolLM2; 'scripted-world' is instant)")]),
]

#: the command groups and what they hold
GROUPS = {"data": "convert and inspect datasets", "labels": "labellers"}


class _Formatter(argparse.HelpFormatter):
    """Lists the commands one a line, without argparse's ``COMMAND`` line above them."""

    def _format_action(self, action: argparse.Action) -> str:
        text = super()._format_action(action)
        if isinstance(action, argparse._SubParsersAction):
            return text.split("\n", 1)[1]
        return text


def build_parser() -> argparse.ArgumentParser:
    """The ``mfray`` parser: one subcommand per row of :data:`COMMANDS`."""
    p = argparse.ArgumentParser(prog="mfray", description=DESCRIPTION, epilog=EPILOG,
                                formatter_class=_Formatter)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND",
                           title="commands")
    groups: dict[str, Any] = {}
    for words, help_, func, flags in COMMANDS:
        where = sub
        if len(words) == 2:
            if words[0] not in groups:
                groups[words[0]] = sub.add_parser(words[0], help=GROUPS[words[0]],
                                                  formatter_class=_Formatter).add_subparsers(dest=f"{words[0]}_command", required=True,
                                    metavar="COMMAND", title="commands")
            where = groups[words[0]]
        cmd = where.add_parser(words[-1], help=help_, description=help_)
        if words[0] in COMMAND_SHORTCUTS:
            add_shortcuts(cmd, words[0])
        for names, options in flags:
            cmd.add_argument(*names, **options)
        cmd.set_defaults(func=func)
    return p
