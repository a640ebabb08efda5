"""Benchmarks of the engine (``mfray bench``): what a run costs end to end, next to what the
model alone can do.

- ``scripted``: many simulations with the scripted model, so that the cost measured is
  mfray's own (prompts, Ray, sampling, mean field, store). Decisions/s end to end, the share of
  round time spent outside the model, and the peak memory of all Ray processes.
- ``model``: a small synthetic run with a real model (SmolLM2 by default, every decision a model
  decision), then the same prompts scored by the plain model in this process at the same batch
  size: the ratio of the two is the engine's efficiency.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Self

import pyarrow.compute as pc

from mfray.config import PolicyConfig, ResourcesConfig, RunConfig, SimConfig
from mfray.data.schema import read_dataset
from mfray.errors import MfrayError


class PeakMemory:
    """Samples the proportional set size (PSS) of this process and every Ray process."""

    def __init__(self, every_s: float = 0.5) -> None:
        self.every_s, self.peak_bytes = every_s, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _total(self) -> int:
        import psutil

        total = 0
        for proc in psutil.process_iter(["pid", "cmdline"]):
            try:
                cmd = " ".join(proc.info["cmdline"] or [])
                if proc.pid == psutil.Process().pid or "ray" in cmd:
                    total += proc.memory_full_info().pss
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_bytes = max(self.peak_bytes, self._total())
            self._stop.wait(self.every_s)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _world(out: Path, events: int, agents: int, warmup: int) -> Path:
    """A synthetic world written by a separate process, so its generation is not measured."""
    proc = subprocess.run([sys.executable, "-m", "mfray.cli", "data", "synth", "--out", str(out),
                           "--events", str(events), "--min-agents", str(agents),
                           "--max-agents", str(agents), "--warmup", str(warmup)],
                          check=False, capture_output=True, text=True)
    if proc.returncode:
        raise MfrayError(f"bench: generating the world failed: {proc.stderr.strip()}")
    return out


def _loop_seconds(store: Any) -> float:
    """Time spent in the round loop: the rounds table repeats each round's timing on every
    simulation's row, so take it once per round."""
    rounds = store.read_rounds(columns=["round", "t_total_s"]).to_pydict()
    return sum(dict(zip(rounds["round"], rounds["t_total_s"], strict=True)).values())


def bench_scripted(simulations: int = 1000, agents: int = 160, warmup: int = 50,
                   shards: int = 1, workdir: Path | None = None) -> dict[str, Any]:
    """``simulations`` events × 1 variant (``mf``) × 1 seed with the scripted model."""
    from mfray.engine import simulate

    work = Path(workdir or tempfile.mkdtemp(prefix="mfray-bench-"))
    data = _world(work / "data", simulations, agents, warmup)
    cfg = RunConfig(sim=SimConfig(data=str(data), variants=("mf",), warmup=warmup),
                    policy=PolicyConfig(model="scripted"),
                    resources=ResourcesConfig(num_shards=shards))
    ds = read_dataset(data)
    with PeakMemory() as mem:
        t0 = time.perf_counter()
        store = simulate(cfg, ds, work / "run", progress=True)
        wall = time.perf_counter() - t0
    loop_s = _loop_seconds(store)
    dec = store.read_decisions(columns=["template_hash"])
    n_model = pc.sum(pc.is_valid(dec["template_hash"])).as_py()
    return {"workload": "scripted", "simulations": simulations, "agents_per_simulation": agents,
            "shards": shards, "decisions": dec.num_rows, "model_decisions": n_model,
            "wall_s": round(wall, 2), "round_loop_s": round(loop_s, 2),
            "decisions_per_s": round(dec.num_rows / loop_s),
            "decisions_per_s_incl_startup": round(dec.num_rows / wall),
            "peak_memory_gib": round(mem.peak_bytes / 2**30, 2), "run_dir": str(store.run_dir)}


def bench_model(model: str | None = None, simulations: int = 8, agents: int = 48,
                batch_size: int = 16, workdir: Path | None = None) -> dict[str, Any]:
    """End-to-end model decisions/s of a run vs. the plain model on the run's own prompts."""
    from mfray.engine import simulate
    from mfray.engine.inference import build_model

    work = Path(workdir or tempfile.mkdtemp(prefix="mfray-bench-"))
    data = _world(work / "data", simulations, agents, warmup=0)
    policy = PolicyConfig(model=model, batch_size=batch_size, log_prompts=True)
    cfg = RunConfig(sim=SimConfig(data=str(data), variants=("mf",), warmup=0), policy=policy)
    t0 = time.perf_counter()
    store = simulate(cfg, read_dataset(data), work / "run", progress=True)
    wall = time.perf_counter() - t0
    loop_s = _loop_seconds(store)
    n = store.read_decisions(columns=["round"]).num_rows
    prompts = [json.loads(line)["prompt"]
               for line in (store.run_dir / "prompts.jsonl").read_text().splitlines()]
    options = ("support", "deny", "query", "comment")
    plain_model = build_model(policy)
    plain_model.score(prompts[:batch_size], options)  # warm the caches as the actor did
    t1 = time.perf_counter()
    plain_model.score(prompts, options)  # one call: the model batches by length itself
    plain_s = time.perf_counter() - t1
    e2e = n / loop_s
    plain = len(prompts) / plain_s
    return {"workload": "model", "model": plain_model.model_id, "decisions": n,
            "batch_size": batch_size, "wall_s": round(wall, 1), "round_loop_s": round(loop_s, 1),
            "end_to_end_decisions_per_s": round(e2e, 2),
            "plain_model_prompts_per_s": round(plain, 2),
            "efficiency": round(e2e / plain, 3), "run_dir": str(store.run_dir)}
