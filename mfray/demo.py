"""The demo behind ``make demo``: synthetic world → dataset → simulations on Ray → evaluation.

It generates a small synthetic world with known dynamics, writes it as a dataset, simulates
every event with the four LLM variants (``state``, ``recent``, ``popular``, ``mf``; SmolLM2 by
default) next to the world's own rule (``oracle``), the statistical references and ``crowd``
(the mean field read without a model), and evaluates the run against the world's real actions.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from mfray.config import EvalConfig, PolicyConfig, RunConfig, SimConfig
from mfray.data.schema import dataset_info, format_info, read_dataset, write_dataset
from mfray.data.synthetic import WorldParams, generate
from mfray.engine import simulate
from mfray.evaluate.report import evaluate, markdown_table, write_report

DEMO_VARIANTS = ("state", "recent", "popular", "mf", "oracle", "persistence", "base-rate", "crowd")
#: small enough for a 2-core CPU with SmolLM2 (about 500 model decisions)
DEMO_WORLD = WorldParams(n_events=3, min_agents=64, max_agents=80, warmup=32, seed=0)


def run_demo(out: Path, params: WorldParams | None = None, seeds: tuple[int, ...] = (0,),
             model: str | None = None, progress: bool = True) -> dict:
    """Run the demo into ``out`` (replaced if it exists) and print what it finds."""
    params = params or DEMO_WORLD
    if out.exists():
        shutil.rmtree(out)
    _, ds = generate(params)
    data_dir = write_dataset(ds, out / "data")
    print(format_info(dataset_info(read_dataset(data_dir))))
    effect = ds.notes["effect"]
    print(f"\nknown effect (from the world's parameters): KL(real ‖ state-only truth) = "
          f"{effect['mean_kl_state_only']:.3f}, KL(real ‖ full truth) = "
          f"{effect['mean_kl_truth']:.3f}, KL(real ‖ other events' base rate) = "
          f"{effect['mean_kl_other_events_base_rate']:.3f}\n")
    cfg = RunConfig(sim=SimConfig(data=str(data_dir), variants=DEMO_VARIANTS, seeds=seeds,
                                  round_size=params.round_size, warmup=params.warmup),
                    policy=PolicyConfig(model=model))
    store = simulate(cfg, read_dataset(data_dir), out / "run", progress=progress)
    ev = evaluate(store.run_dir, EvalConfig())
    paths = write_report(ev, out / "run" / "eval")
    print(f"\nmodel: {store.run_info()['model_id']}")
    print("stance — mean over events [95% bootstrap interval], rollout agents only\n")
    print(markdown_table(ev.summary, "stance"))
    print(f"\nreport: {paths['markdown']}\nplots:  {paths['plot']}, {paths['plot_events']}")
    summary = {e["variant"]: round(e["kl"], 4) for e in ev.summary}
    (out / "demo.json").write_text(json.dumps({"kl": summary, "effect": {
        k: v for k, v in effect.items() if k != "per_event"}}, indent=2) + "\n")
    return summary
