"""Population sweeps on Ray Tune (``mfray sweep``): one trial per simulation batch.

A sweep file names a base run config, optionally a synthetic world, and a grid of dotted keys:

```yaml
base:                       # a run config (sections sim, policy, meanfield, eval, resources)
  sim: {variants: [state, mf, base-rate, persistence], seeds: [0, 1], warmup: 20}
  policy: {model: scripted}
world: {n_events: 4, min_agents: 80, max_agents: 120}  # optional: a world made per trial
space:                      # every combination is one trial
  sim.round_size: [8, 16]
  world.herding: [0.0, 2.0]
trial_cpus: 1               # Ray resources held by each trial
max_concurrent: 1           # trials at a time (a CPU model uses every core)
```

Each trial builds its config (unknown keys and bad values fail before anything runs), makes its
world when the sweep has one, simulates every event × seed × variant of the config as one run in
``OUT/trials/<trial>``, evaluates it and reports one row per variant. The results are
``OUT/sweep.parquet``, ``OUT/sweep.md`` and ``OUT/sweep.png`` (KL against each swept key, one
line per variant). Running the same command again resumes: finished trials are kept, and an
interrupted trial resumes its run from the last complete round.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from mfray.config import RunConfig, from_dict
from mfray.errors import ConfigError, MfrayError
from mfray.evaluate import plots

METRICS = ("kl", "js", "tv", "f1_micro", "f1_macro", "nll")


@dataclass(frozen=True)
class SweepConfig:
    base: dict[str, Any] = field(default_factory=dict)
    world: dict[str, Any] | None = None
    space: dict[str, list[Any]] = field(default_factory=dict)
    trial_cpus: float = 1.0
    max_concurrent: int = 1

    def __post_init__(self) -> None:
        if not self.space or any(not isinstance(v, list) or not v for v in self.space.values()):
            raise ConfigError("sweep: `space` maps dotted keys to non-empty lists of values")
        for key in self.space:
            section = key.split(".", 1)[0]
            if "." not in key or section not in (*RunConfig.__dataclass_fields__, "world"):
                raise ConfigError(f"sweep: space key {key!r} is not section.key (sections: "
                                  f"{', '.join(RunConfig.__dataclass_fields__)}, world)")
            if section == "world" and self.world is None:
                raise ConfigError(f"sweep: {key!r} needs a `world` section")
        if self.trial_cpus < 0 or self.max_concurrent < 1:
            raise ConfigError("sweep: trial_cpus >= 0 and max_concurrent >= 1")

    def trials(self) -> list[dict[str, Any]]:
        """Every combination of the space, in a stable order."""
        keys = list(self.space)
        return [dict(zip(keys, values, strict=True))
                for values in itertools.product(*(self.space[k] for k in keys))]

    def build(self, params: dict[str, Any]) -> tuple[RunConfig, dict[str, Any] | None]:
        """The run config and world parameters of one trial (validated)."""
        from mfray.data.synthetic import WorldParams

        doc = {"base": copy.deepcopy(self.base), "world": copy.deepcopy(self.world)}
        for key, value in params.items():
            section, rest = key.split(".", 1)
            node = doc["world"] if section == "world" else \
                doc["base"].setdefault(section, {})
            *path, leaf = rest.split(".")
            for p in path:
                node = node.setdefault(p, {})
            node[leaf] = value
        run = from_dict(RunConfig, doc["base"])
        world = None
        if doc["world"] is not None:
            try:
                world = asdict(WorldParams(**doc["world"]))
            except (TypeError, ValueError) as exc:
                raise ConfigError(f"sweep: world {doc['world']}: {exc}") from None
        return run, world


def load_sweep(path: str | Path) -> SweepConfig:
    try:
        doc = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read the sweep file {path}: {exc}") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: a sweep file is a mapping (base, world, space, ...)")
    unknown = set(doc) - set(SweepConfig.__dataclass_fields__)
    if unknown:
        raise ConfigError(f"{path}: unknown sweep key(s) {sorted(unknown)}")
    return SweepConfig(**doc)


def trial_name(params: dict[str, Any]) -> str:
    """A stable directory name for one combination."""
    digest = hashlib.sha1(json.dumps(params, sort_keys=True, default=str).encode())
    return "trial-" + digest.hexdigest()[:10]


def run_trial(sweep: SweepConfig, params: dict[str, Any], out: Path) -> list[dict[str, Any]]:
    """One trial: make its world, simulate (resuming a partial run), evaluate; one row per
    variant and dimension with the parameters and every metric."""
    from mfray.data.schema import read_dataset, write_dataset
    from mfray.data.synthetic import WorldParams, generate
    from mfray.engine import simulate
    from mfray.evaluate.compare import compare
    from mfray.store import RunStore

    cfg, world = sweep.build(params)
    where = out / "trials" / trial_name(params)
    where.mkdir(parents=True, exist_ok=True)
    if world is not None:
        data = where / "data"
        if not (data / "dataset.json").is_file():
            write_dataset(generate(WorldParams(**world))[1], data)
        cfg = replace(cfg, sim=replace(cfg.sim, data=str(data)))
    if not cfg.sim.data:
        raise ConfigError("sweep: give base.sim.data (or --data), or a `world` section")
    run_dir = where / "run"
    resume = (run_dir / "runs.parquet").is_file() and \
        RunStore.open(run_dir).run_info()["status"] != "complete"
    if not (run_dir / "runs.parquet").is_file() or resume:
        simulate(cfg, read_dataset(cfg.sim.data), run_dir, resume=resume, progress=False)
    comp = compare(run_dir, cfg.eval)
    return [{"trial": where.name, **{k: json.dumps(v) if isinstance(v, list | dict) else v
                                     for k, v in params.items()},
             "variant": r["variant"], "dimension": r["dimension"],
             **{m: r[m] for m in METRICS}, "kl_lo": r["kl_lo"], "kl_hi": r["kl_hi"],
             "run_dir": str(run_dir)} for r in comp.rows]


def sweep(sweep_cfg: SweepConfig, out: str | Path, data: str | None = None
          ) -> list[dict[str, Any]]:
    """Run (or resume) every trial on Ray Tune; write and return the results table."""
    from ray import tune

    from mfray.engine.ray_env import ensure_ray

    out = Path(out).resolve()
    if data:
        base = copy.deepcopy(sweep_cfg.base)
        base.setdefault("sim", {})["data"] = str(Path(data).resolve())
        sweep_cfg = SweepConfig(**(asdict(sweep_cfg) | {"base": base}))
    trials = sweep_cfg.trials()
    for params in trials:  # every trial's config is checked before any runs
        sweep_cfg.build(params)
    first = sweep_cfg.build(trials[0])[0]
    ensure_ray(first.resources)

    def trainable(config: dict[str, Any]) -> None:
        rows = run_trial(sweep_cfg, config["params"], out)
        tune.report({"rows": json.dumps(rows), "kl": min(r["kl"] for r in rows)})

    fn = tune.with_resources(trainable, {"cpu": sweep_cfg.trial_cpus})
    path = out / "tune"
    if tune.Tuner.can_restore(path):
        tuner = tune.Tuner.restore(str(path), trainable=fn, resume_errored=True)
    else:
        tuner = tune.Tuner(
            fn, param_space={"params": tune.grid_search(trials)},
            tune_config=tune.TuneConfig(max_concurrent_trials=sweep_cfg.max_concurrent),
            run_config=tune.RunConfig(storage_path=str(out), name="tune", verbose=0))
    grid = tuner.fit()
    failed = [r for r in grid if r.error is not None]
    if failed:
        raise MfrayError(f"sweep: {len(failed)} of {len(trials)} trials failed; first: "
                         f"{failed[0].error}. Rerun the same command to retry them.")
    rows = [row for r in grid for row in json.loads(r.metrics["rows"])]
    rows.sort(key=lambda r: (r["trial"], r["dimension"], r["variant"]))
    write_results(rows, list(sweep_cfg.space), out)
    return rows


def write_results(rows: list[dict[str, Any]], keys: list[str], out: Path) -> dict[str, Path]:
    """``sweep.parquet``, ``sweep.md`` and ``sweep.png`` in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {"parquet": out / "sweep.parquet", "md": out / "sweep.md", "png": out / "sweep.png"}
    pq.write_table(pa.Table.from_pylist(rows), paths["parquet"])
    cols = [*keys, "variant", "dimension", *METRICS]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        cells = [f"{r[c]:.3f}" if isinstance(r[c], float) else str(r[c]) for c in cols]
        lines.append("| " + " | ".join(cells) + " |")
    paths["md"].write_text("# Sweep\n\n" + "\n".join(lines) + "\n\nKL with a bootstrap "
                           "interval over events is in sweep.parquet (kl_lo, kl_hi).\n",
                           encoding="utf-8")
    plots.sweep(rows, keys, paths["png"])
    return paths
