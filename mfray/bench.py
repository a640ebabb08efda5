"""Benchmarks of the engine (``mfray bench``): what a run costs end to end, next to what the
model alone can do.

- ``scripted``: many simulations with the scripted model, so that the cost measured is
  mfray's own (prompts, Ray, sampling, mean field, store). Decisions/s end to end, the share of
  round time spent outside the model, and the peak memory of all Ray processes.
- ``model``: a small synthetic run with a real model (SmolLM2 by default, every decision a model
  decision), then the same prompts scored by the plain model in this process at the same batch
  size: the ratio of the two is the engine's efficiency. With ``reference``, the MF-LLM
  authors' loop structure (``../shared/bench/reference_loop.py``) runs on the same model in a
  child process first, and the result says how many times faster mfray is.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Self

import pyarrow.compute as pc

from mfray.config import PolicyConfig, ResourcesConfig, RunConfig, SimConfig
from mfray.data.schema import read_dataset
from mfray.data.synthetic import WorldParams
from mfray.errors import MfrayError

OPTIONS = ("support", "deny", "query", "comment")  # the synthetic world's stance


class PeakMemory:
    """Samples the proportional set size (PSS) of this process and its descendants (the local
    Ray instance it started), not of other Ray sessions on the machine."""

    def __init__(self, every_s: float = 0.5) -> None:
        self.every_s, self.peak_bytes = every_s, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _total(self) -> int:
        import psutil

        me = psutil.Process()
        total = 0
        for proc in [me, *me.children(recursive=True)]:
            try:
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
    """Time spent in the round loop: each step's rounds file repeats its timing on every
    simulation's row, so take it once per step (a round of one wave)."""
    import pyarrow.parquet as pq

    return sum(pq.read_table(f, columns=["t_total_s"])["t_total_s"][0].as_py()
               for f in store.files("rounds"))


def bench_scripted(simulations: int = 1000, agents: int = 160, warmup: int = 50,
                   shards: int = 1, round_size: int = 16, workdir: Path | None = None,
                   model: str = "scripted", data: Path | None = None,
                   wave_agents: int = ResourcesConfig.wave_agents) -> dict[str, Any]:
    """``simulations`` events × 1 variant × 1 seed: ``mf`` with the scripted model, or
    ``mf-distilled`` with ``model``, a distilled policy's directory (the ``distilled``
    workload), on a synthetic world made for it or on ``data``, a world of that many events of
    ``agents`` each."""
    from mfray.engine import simulate

    work = Path(workdir or tempfile.mkdtemp(prefix="mfray-bench-"))
    data = Path(data) if data else _world(work / "data", simulations, agents, warmup)
    scripted = model == "scripted"  # else mf-distilled, decided in the shards
    cfg = RunConfig(sim=SimConfig(data=str(data), variants=("mf" if scripted else "mf-distilled",),
                                  warmup=warmup, round_size=round_size),
                    policy=PolicyConfig(model="scripted") if scripted else
                    PolicyConfig(distilled=model),
                    resources=ResourcesConfig(num_shards=shards, wave_agents=wave_agents))
    ds = read_dataset(data)
    sources = WorldParams().threads_per_event  # what `mfray data synth` writes per event
    if ds.events.num_rows != simulations or \
            ds.posts.num_rows != simulations * (agents + sources):
        raise MfrayError(f"bench: {data} is not a world of {simulations} events of {agents} "
                         "agents (mfray data synth --events N --min-agents A --max-agents A)")
    with PeakMemory() as mem:
        t0 = time.perf_counter()
        store = simulate(cfg, ds, work / "run", progress=True)
        wall = time.perf_counter() - t0
    loop_s = _loop_seconds(store)
    dec = store.read_decisions(columns=["template_hash", "sim_id", "agent_index"])
    n_model = pc.sum(pc.is_valid(dec["template_hash"])).as_py()
    unique = dec.group_by(["sim_id", "agent_index"]).aggregate([]).num_rows
    return {"workload": "scripted" if scripted else "distilled",
            "model": model, "simulations": simulations,
            "agents_per_simulation": agents, "wave_agents": wave_agents,
            "shards": shards, "decisions": dec.num_rows, "distinct_agents": unique,
            "rounds": len(store.completed_rounds()), "model_decisions": n_model,
            "wall_s": round(wall, 2), "round_loop_s": round(loop_s, 3),
            "decisions_per_s": round(dec.num_rows / loop_s),
            "decisions_per_s_incl_startup": round(dec.num_rows / wall),
            "peak_memory_gib": round(mem.peak_bytes / 2**30, 2), "run_dir": str(store.run_dir)}


def bench_model(model: str | None = None, simulations: Sequence[int] = (1, 10, 100),
                agents: int = 32, batch_size: int = 64, bf16: str = "auto",
                mode: str = "choice", simple_sample: int = 160,
                workdir: Path | None = None,
                max_batch_tokens: int | None = None) -> dict[str, Any]:
    """The model workload at each number of concurrent simulations: ``agents`` per simulation,
    rounds of 16, no warm-up (every decision a model decision), one variant (``mf``).

    For each point: end-to-end decisions/s and prompt tokens/s of the round loop, the share of
    round time spent in the model (the rest is orchestration: Ray, prompts, sampling, mean
    field, store), and the *efficiency*: end-to-end decisions/s over the plain model's
    throughput on the same prompts in this process (one call per round, prefix sharing on, the
    same batch size; in text mode, plain batched generation). Then the *simple way* on a sample
    of ``simple_sample`` of those prompts: one simulation at a time, a round of 16 per batch,
    full prompts (no prefix sharing) — the speed-up is end-to-end over that."""
    from mfray.llm.build import build_model

    if not simulations or min(simulations) < 1 or agents < 1:
        raise MfrayError("bench: need simulations >= 1 and agents >= 1")
    work = Path(workdir or tempfile.mkdtemp(prefix="mfray-bench-"))
    if max_batch_tokens is None:  # 0 is refused by ResourcesConfig, not replaced
        max_batch_tokens = ResourcesConfig.max_batch_tokens
    policy = PolicyConfig(model=model, log_prompts=True, bf16=bf16,
                          mode=mode)  # type: ignore[arg-type]
    resources = ResourcesConfig(batch_size=batch_size, max_batch_tokens=max_batch_tokens)
    plain = build_model(policy, resources=resources)
    points = [_model_point(plain, policy, resources, n, agents, work / f"sims-{n}")
              for n in simulations]
    largest = max(points, key=lambda p: p["simulations"])
    simple = _simple_way(plain, largest.pop("_rounds"), simple_sample, mode)
    for p in points:
        p.pop("_rounds", None)
    return {"workload": "model", "model": plain.model_id, "mode": mode, "bf16": bf16,
            "batch_size": batch_size, "max_batch_tokens": max_batch_tokens,
            "agents_per_simulation": agents, "points": points,
            "simple_way_decisions_per_s": round(simple, 2),
            "speedup_vs_simple_way": round(largest["end_to_end_decisions_per_s"] / simple, 2)}


def _model_point(plain: Any, policy: PolicyConfig, resources: ResourcesConfig, n: int,
                 agents: int, work: Path) -> dict[str, Any]:
    """One run of ``n`` simulations, then its own prompts through the plain model."""
    from mfray.engine import simulate
    from mfray.llm.prefix import prefix_groups

    data = _world(work / "data", n, agents, warmup=0)
    cfg = RunConfig(sim=SimConfig(data=str(data), variants=("mf",), warmup=0), policy=policy,
                    resources=resources)
    store = simulate(cfg, read_dataset(data), work / "run", progress=True)
    loop_s = _loop_seconds(store)
    dec = store.read_decisions(columns=["latency_s", "tokens_in", "template_hash"])
    asked = dec.filter(pc.is_valid(dec["template_hash"]))
    # each decision's latency_s is its share of its model call: their sum is the model's time
    model_s = pc.sum(asked["latency_s"]).as_py() or 0.0
    logged = [json.loads(line)
              for line in (store.run_dir / "prompts.jsonl").read_text().splitlines()]
    by_key_round = _rounds_of(logged)
    t0 = time.perf_counter()
    for prompts in by_key_round:  # as the actor does: one call per round, canonical order
        _plain_call(plain, prompts, policy)
    plain_rate = len(logged) / (time.perf_counter() - t0)
    ids = plain.encode(by_key_round[0]) if hasattr(plain, "encode") else []
    shared = [s for s, rows in prefix_groups(ids) for _ in rows]
    e2e = asked.num_rows / loop_s
    return {"simulations": n, "decisions": asked.num_rows, "round_loop_s": round(loop_s, 3),
            "end_to_end_decisions_per_s": round(e2e, 2),
            "prompt_tokens_per_s": round((pc.sum(asked["tokens_in"]).as_py() or 0) / loop_s),
            "mean_prompt_tokens": round(pc.mean(asked["tokens_in"]).as_py() or 0),
            "mean_shared_prefix_tokens": round(sum(shared) / len(shared)) if shared else 0,
            "model_share_of_round_time": round(model_s / loop_s, 3),
            "orchestration_share_of_round_time": round(1 - model_s / loop_s, 3),
            "plain_model_decisions_per_s": round(plain_rate, 2),
            "efficiency": round(e2e / plain_rate, 3), "run_dir": str(store.run_dir),
            "_rounds": by_key_round}


def _rounds_of(logged: list[dict[str, Any]]) -> list[list[str]]:
    """The logged prompts of each round (agent // 16: no warm-up), in the actor's canonical
    (sim, agent) order."""
    rounds: dict[int, list[tuple[list[int], str]]] = {}
    for row in logged:
        rounds.setdefault(row["key"][1] // 16, []).append((row["key"], row["prompt"]))
    return [[p for _, p in sorted(rows)] for _, rows in sorted(rounds.items())]


def _plain_call(plain: Any, prompts: list[str], policy: PolicyConfig) -> None:
    if policy.mode == "text":
        plain.generate(prompts, max_new_tokens=policy.max_new_tokens,
                       temperature=policy.temperature, top_p=policy.top_p, top_k=policy.top_k,
                       repetition_penalty=policy.repetition_penalty,
                       seeds=list(range(len(prompts))))
    else:
        plain.score(prompts, OPTIONS)


def _simple_way(plain: Any, rounds: list[list[str]], sample: int, mode: str) -> float:
    """Decisions/s of one simulation's round of 16 at a time, full prompts."""
    groups = [r[i:i + 16] for r in rounds for i in range(0, len(r), 16)]
    todo, n = [], 0
    for g in groups:
        if n >= sample:
            break
        todo.append(g)
        n += len(g)
    sharing, batch = getattr(plain, "prefix_sharing", False), getattr(plain, "batch_size", 16)
    plain.prefix_sharing, plain.batch_size = False, 16
    try:
        t0 = time.perf_counter()
        for g in todo:
            _plain_call(plain, g, PolicyConfig(mode=mode))  # type: ignore[arg-type]
        return n / (time.perf_counter() - t0)
    finally:
        plain.prefix_sharing, plain.batch_size = sharing, batch


REFERENCE_RATE = re.compile(r"=\s*([0-9.]+)\s*decisions/s")


def reference_loop(script: Path, model: str | None = None, rounds: int = 2) -> dict[str, Any]:
    """The authors' loop structure (``reference_loop.py MODEL_DIR GGUF_FILE ROUNDS``, which
    prints ``... = X decisions/s``) on the same GGUF model, in a child process of this one so
    that both run on the same machine with the same threads. Its own load time is excluded, as
    it is from mfray's round loop."""
    from mfray.llm.load import default_gguf

    script = Path(script)
    if not script.is_file():
        raise MfrayError(f"bench: no reference loop at {script} (it is "
                         "../shared/bench/reference_loop.py in the project's shared folder)")
    gguf = default_gguf() if model is None else Path(model).expanduser()
    if not (gguf.is_file() and gguf.suffix == ".gguf"):
        raise MfrayError(f"bench: the reference loop loads a .gguf file; {gguf} is not one "
                         "(leave --model out for SmolLM2)")
    proc = subprocess.run([sys.executable, str(script), str(gguf.parent), gguf.name,
                           str(rounds)], check=False, capture_output=True, text=True)
    found = REFERENCE_RATE.findall(proc.stdout)
    if proc.returncode or not found:
        tail = (proc.stderr.strip() or proc.stdout.strip())[-600:]
        raise MfrayError(f"bench: the reference loop failed (exit {proc.returncode}): {tail}")
    return {"script": str(script), "rounds": rounds, "decisions_per_s": float(found[-1]),
            "output": proc.stdout.strip().splitlines()[-1]}


def side_by_side(result: dict[str, Any], reference: dict[str, Any]) -> dict[str, Any]:
    """``result`` (of :func:`bench_model`) with the reference loop's rate and mfray's speed-up
    over it at the largest point."""
    largest = max(result["points"], key=lambda p: p["simulations"])
    rate = reference["decisions_per_s"]
    if rate <= 0:
        raise MfrayError(f"bench: the reference loop reported {rate} decisions/s")
    return {**result, "reference_loop": reference,
            "speedup_vs_reference_loop": round(largest["end_to_end_decisions_per_s"] / rate, 2)}


def format_model_bench(result: dict[str, Any]) -> str:
    """The scaling curve as a Markdown table, then the simple-way comparison (and the authors'
    loop structure, where it ran)."""
    head = ("| simulations | decisions | decisions/s | prompt tokens/s | model share | "
            "plain model decisions/s | efficiency |\n|---|---|---|---|---|---|---|")
    rows = [f"| {p['simulations']} | {p['decisions']} | {p['end_to_end_decisions_per_s']} | "
            f"{p['prompt_tokens_per_s']} | {p['model_share_of_round_time']:.0%} | "
            f"{p['plain_model_decisions_per_s']} | {p['efficiency']} |"
            for p in result["points"]]
    lines = [(f"{result['model']}, {result['mode']} mode, bf16 {result['bf16']}, "
              f"batch {result['batch_size']}, {result['max_batch_tokens']} tokens"),
             head, *rows,
             (f"simple way (one simulation, rounds of 16, full prompts): "
              f"{result['simple_way_decisions_per_s']} decisions/s; end to end at the "
              f"largest point is {result['speedup_vs_simple_way']}x that")]
    ref = result.get("reference_loop")
    if ref:
        lines.append(f"the MF-LLM authors' loop structure ({ref['script']}, {ref['rounds']} "
                     f"rounds of 16, 50-token text, then a summary) on the same model: "
                     f"{ref['decisions_per_s']} decisions/s; end to end at the largest point "
                     f"is {result['speedup_vs_reference_loop']}x that")
    return "\n".join([*lines, ""])
