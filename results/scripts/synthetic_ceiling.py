"""How far below `persistence` a policy can get on a synthetic world, and with what information.

Reads a run of `bayes` and `persistence` simulated with `sim.meanfield_update=expected` (the
mean field is then a function of the policy, not of a seed) and recomputes `bayes`' rollout
outside the engine, checking that it gives the run's probabilities. Then it takes information
away, one piece at a time, and prints each policy's KL over the run's events:

- `mean persona`: every rollout agent gets the warm-up's mean persona instead of its own;
- `no herding drift`: the mean field stays at the warm-up's shares through the rollout;
- `prompt: counts`: the event latent inferred from the warm-up's label counts alone, not from
  who the warm-up agents were (personas marginalised over agents of the dataset), which is what
  an `mf` prompt shows; rollout agents keep their own persona and the evolving mean field;
- `prompt: tally N`: the same from the counts as the `tally` form writes them (`N` reactions,
  rounded as `mfray.meanfield.tally` rounds them).

    python results/scripts/synthetic_ceiling.py data/synth36 runs/synth36/bayes \\
        [--held-out synth-32,...]

Not part of the package: an analysis behind results/synthetic-world.md.
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import pyarrow.compute as pc
from scipy.special import logsumexp, softmax

from mfray.config import EvalConfig
from mfray.data.schema import STANCE, STANCE_OPTIONS, read_dataset
from mfray.data.synthetic import BASE_SHARES, PERSONA_WEIGHTS, SyntheticWorld, shares_seen
from mfray.evaluate.compare import relative_change
from mfray.evaluate.metrics import kl
from mfray.meanfield import tally
from mfray.store import RunStore

K = len(STANCE_OPTIONS)
PRIOR_DRAWS = 20_000  # the latent's prior, weighted by the warm-up's counts
PERSONA_SAMPLE = 400  # agents of the dataset the count likelihood averages over


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("data")
    ap.add_argument("run")
    ap.add_argument("--held-out", default="", help="events to report apart, comma-separated")
    ap.add_argument("--tally-sizes", default="20,48")
    args = ap.parse_args()
    ds = read_dataset(args.data)
    world = SyntheticWorld.from_dataset(ds)
    store = RunStore.open(args.run)
    cfg = store.config()
    if cfg["sim"]["meanfield_update"] != "expected":
        raise SystemExit("simulate the run with --set sim.meanfield_update=expected")
    warm_n, size = cfg["sim"]["warmup"], cfg["sim"]["round_size"]
    rows = [r for r in store.read_decisions().to_pylist() if r["seed"] == cfg["sim"]["seeds"][0]]
    profiles = dict(zip(ds.posts["post_id"].to_pylist(), ds.posts["profile"].to_pylist(),
                        strict=True))
    replies = ds.posts.filter(pc.is_valid(ds.posts["parent_id"]))["profile"].to_pylist()
    rng = np.random.default_rng(0)
    sample = np.stack([world.features(replies[i])
                       for i in rng.choice(len(replies), PERSONA_SAMPLE, replace=False)])
    prior = rng.normal(0.0, world.params.event_spread, (PRIOR_DRAWS, K))
    sizes = [int(n) for n in args.tally_sizes.split(",") if n]

    kls: dict[str, dict[str, float]] = defaultdict(dict)
    for event in sorted({r["event_id"] for r in rows if r["variant"] == "bayes"}):
        mine = sorted((r for r in rows if r["event_id"] == event and r["variant"] == "bayes"),
                      key=lambda r: r["agent_index"])
        x = np.stack([world.features(profiles[r["post_id"]]) for r in mine])
        y = np.array([STANCE_OPTIONS.index(r["real"][STANCE]) for r in mine])
        rounds = [r["round"] for r in mine]
        real = np.bincount(y[warm_n:], minlength=K)
        persistence = [r for r in rows if r["event_id"] == event
                       and r["variant"] == "persistence" and not r["is_warmup"]]
        kls["persistence"][event] = kl(real, np.sum([r["probs"][STANCE] for r in persistence], 0))
        latent = world.latent_posterior(x[:warm_n], y[:warm_n])
        ev = _Event(world, x, y, rounds, warm_n, size)

        even = np.full(len(latent), 1.0 / len(latent))
        ours = ev.rollout(even, latent)
        engine = np.sum([r["probs"][STANCE] for r in mine[warm_n:]], axis=0)
        np.testing.assert_allclose(ours, engine, rtol=1e-9, err_msg=f"{event}: not the run's")
        kls["bayes"][event] = kl(real, ours)
        kls["mean persona"][event] = kl(real, ev.rollout(even, latent, mean_persona=True))
        kls["no herding drift"][event] = kl(real, ev.rollout(even, latent, frozen=True))
        # what a prompt shows: the warm-up's counts, not who the warm-up agents were
        seen_mix = np.bincount(y[:(warm_n // size) * size], minlength=K).astype(float)
        mean_shares = shares_seen(y[:warm_n], size).mean(axis=0)
        persona = world.base_logits + world.params.persona_strength * sample @ PERSONA_WEIGHTS.T \
            + world.params.herding * (mean_shares - BASE_SHARES)
        logits = persona[None] + prior[:, None, :]
        log_q = logsumexp(logits - logsumexp(logits, 2, keepdims=True), 1) - np.log(len(sample))
        shown = {"prompt: counts": np.bincount(y[:warm_n], minlength=K).astype(float)}
        for n in sizes:
            shown[f"prompt: tally {n}"] = tally(seen_mix / seen_mix.sum(), n) * warm_n / n
        for name, c in shown.items():
            lw = log_q @ c
            w = np.exp(lw - lw.max())
            kls[name][event] = kl(real, ev.rollout(w / w.sum(), prior))

    held = [e for e in args.held_out.split(",") if e]
    groups = [("all events", sorted(kls["bayes"]))] + ([("held out", held)] if held else [])
    for title, events in groups:
        print(f"\n{title} ({len(events)}): mean KL, change against persistence and against "
              "bayes [95 % paired bootstrap]")
        base = np.array([kls["persistence"][e] for e in events])
        bayes = np.array([kls["bayes"][e] for e in events])
        for name, by_event in kls.items():
            v = np.array([by_event[e] for e in events])
            vs_p = relative_change(v, base, EvalConfig())
            vs_b = relative_change(v, bayes, EvalConfig())
            print(f"  {name:18s} {v.mean():.3f}  {_pct(vs_p)}  {_pct(vs_b)}")


@dataclass(frozen=True)
class _Event:
    """One event's agents in arrival order: features, real labels, rounds."""

    world: SyntheticWorld
    x: np.ndarray
    y: np.ndarray
    rounds: list[int]
    warm_n: int
    size: int

    def rollout(self, weights: np.ndarray, draws: np.ndarray, mean_persona: bool = False,
                frozen: bool = False) -> np.ndarray:
        """The rollout's summed probabilities under the rule averaged over weighted latent
        draws, its mean field fed their expected counts (the warm-up agents of a round join
        the mean field with it, as in the engine)."""
        x, y, warm_n, size = self.x, self.y, self.warm_n, self.size
        counts, total = np.zeros(K), np.zeros(K)
        whole = (warm_n // size) * size  # the warm-up rounds' agents
        for t in range(max(self.rounds) + 1):
            idx = [i for i, r in enumerate(self.rounds) if r == t]
            shares = counts / counts.sum() if counts.sum() else np.full(K, 1.0 / K)
            if frozen and t * size >= warm_n:
                shares = np.bincount(y[:whole], minlength=K) / whole
            roll = [i for i in idx if i >= warm_n]
            added = np.bincount(y[[i for i in idx if i < warm_n]], minlength=K).astype(float)
            if roll:
                xs = np.tile(x[:warm_n].mean(0), (len(roll), 1)) if mean_persona else x[roll]
                rule = self.world.rule_logits(xs, shares)
                p = np.einsum("s,snk->nk", weights, softmax(rule[None] + draws[:, None], 2))
                total += p.sum(0)
                added += p.sum(0)
            counts += added
        return total


def _pct(change: tuple[float, float, float]) -> str:
    point, low, high = change
    return f"{point:+6.1f} % [{low:+.1f}, {high:+.1f}]"


if __name__ == "__main__":
    main()
