"""How much a policy's read of the `tally` mean field depends on the order of its words alone.

Shows the same real agents of one event (as `mfray probe` draws them) the same counts written
as a tally in several orders, and prints the mean probability of each option per order, with
the spread over orders, and how each option's read follows its share of the first and of the
last words over the orders (a correlation). A policy that reads the tally by value gives the
same mix for every order; one whose read swings with the order wanders in a rollout, where
each round's new counts redraw the order (results/synthetic-world.md).

    python results/scripts/tally_order.py data/synth36 \\
        runs/synth36/tune-tally48-s1/adapter synth-35 --counts 13,7,11,19 --tally-size 48

Not part of the package: an analysis behind results/synthetic-world.md.
"""

from __future__ import annotations

import argparse
import re

import numpy as np

from mfray.config import PolicyConfig, SimConfig
from mfray.data.schema import read_dataset
from mfray.llm.build import build_model
from mfray.meanfield import NumericMeanField
from mfray.policy import population_text
from mfray.probe import agents, mean_read

#: a tally line (:meth:`NumericMeanField.tally_line`): dimension, number of words, the words
_TALLY_LINE = re.compile(r"^([^\n:]+): (\d+) typical reactions: ([^\n]*?) (\(n=\d+\))$")


def tally_words(line: str) -> list[str]:
    """The words of a tally line, in their order."""
    m = _TALLY_LINE.fullmatch(line)
    if m is None:
        raise ValueError(f"not a tally line: {line!r}")
    return m[3].split(" ")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("data")
    ap.add_argument("adapter", help="a policy adapter tuned on the tally form ('' for none)")
    ap.add_argument("event")
    ap.add_argument("--counts", required=True, help="the counts shown, in label order: 13,7,11,19")
    ap.add_argument("--dimension", default=None)
    ap.add_argument("--tally-size", type=int, default=48)
    ap.add_argument("--orders", type=int, default=8)
    ap.add_argument("--agents", type=int, default=24)
    ap.add_argument("--edge", type=int, default=8,
                    help="words at each end of the line whose mix the reads are checked against")
    ap.add_argument("--bf16", default="off", choices=("auto", "on", "off"))
    args = ap.parse_args()

    ds = read_dataset(args.data)
    dim = args.dimension or next(iter(ds.label_space))
    options = tuple(ds.label_space[dim])
    counts = tuple(int(c) for c in args.counts.split(","))
    if len(counts) != len(options):
        ap.error(f"--counts needs {len(options)} numbers, one per option of {dim}: {options}")
    sim = SimConfig(data=args.data, events=(args.event,), meanfield_form="tally",
                    tally_size=args.tally_size)
    model = build_model(PolicyConfig(adapter=args.adapter or None, bf16=args.bf16), args.data)
    people = agents(ds, sim, args.agents, seed=0)
    mf = NumericMeanField({d: counts if d == dim else (1,) * len(o)
                           for d, o in ds.label_space.items()})
    print(f"{args.event}: {dim} counts {dict(zip(options, counts, strict=True))}, "
          f"{args.agents} agents, the prompt's order and {args.orders} others of "
          f"{args.tally_size} words\n")
    print("| order | " + " | ".join(options) + " |\n|---|" + "---|" * len(options))
    # the simulator's population block, with only the order of this dimension's words changed
    block = population_text("mf", meanfield=mf, history=[], label_space=ds.label_space,
                            meanfield_form="tally", tally_size=args.tally_size)
    line = mf.tally_line(dim, options, args.tally_size)
    assert line in block, "the tally line is not in the population block"
    reads, first, last = [], [], []
    for seed in [None, *range(args.orders)]:
        ordered = mf.tally_line(dim, options, args.tally_size, order_seed=seed)
        words = tally_words(ordered)
        first.append([words[:args.edge].count(o) / args.edge for o in options])
        last.append([words[-args.edge:].count(o) / args.edge for o in options])
        reads.append(mean_read(model, people, block.replace(line, ordered), dim, options))
        name = "the prompt's" if seed is None else str(seed)
        print(f"| {name} | " + " | ".join(f"{p:.2f}" for p in reads[-1]) + " |")
    r = np.array(reads)
    shown = np.asarray(counts) / sum(counts)
    for name, row in [("shown", shown), ("mean over orders", r.mean(0)),
                      ("sd over orders", r.std(0)), ("range", r.max(0) - r.min(0))]:
        print(f"| {name} | " + " | ".join(f"{p:.2f}" for p in row) + " |")
    # where the order acts: the read against the mix of the first and the last words
    for name, mix in [(f"corr. with the first {args.edge} words", first),
                      (f"corr. with the last {args.edge} words", last)]:
        m = np.array(mix)
        corr = [np.corrcoef(r[:, k], m[:, k])[0, 1] if m[:, k].std() and r[:, k].std()
                else float("nan") for k in range(len(options))]
        print(f"| {name} | " + " | ".join(f"{c:+.2f}" for c in corr) + " |")


if __name__ == "__main__":
    main()
