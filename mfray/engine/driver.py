"""The driver: the MF-LLM round loop (:func:`run_rounds`), :func:`simulate`, which sets a run
up on Ray and runs it, and the recovery beside them.

Topology (architecture.md): ``AgentShard`` actors hold the agents of every simulation and build
their prompts; one ``Population`` actor (the mean field) keeps every simulation's population
state and publishes it once per round; one ``InferenceServer`` actor holds the model and scores
the prompts of all shards in a canonical order; the driver runs the loop and writes each round
to the store. All simulations of a run (units × seeds × variants) advance round by round
together, so that one round's model requests form one large batch. A lost actor is rebuilt
from the store (at most :data:`MAX_RECOVERIES` times), and a run resumes from its last
complete round. A run of more than ``resources.wave_agents`` agent-simulations runs its
simulations in waves, one after another (:func:`_run_wave`), so that its memory stays bounded.
"""

from __future__ import annotations

import os
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from tqdm import tqdm

from mfray.config import RunConfig
from mfray.data.schema import Dataset
from mfray.engine.layout import SimSpec, Wave, check_memory, plan, shard_sims, waves
from mfray.engine.placement import (
    PlacementTimeout,
    nodes_with,
    nth,
    spread,
    summary,
    wait_placed,
)
from mfray.engine.population import Population
from mfray.engine.ray_env import ensure_ray
from mfray.engine.resume import open_store, resume_point, resumed
from mfray.engine.shard import AgentShard
from mfray.errors import MfrayError
from mfray.llm import LanguageModel
from mfray.store import RunStore
from mfray.store.lock import RunLock
from mfray.variants import variant


def run_rounds(cfg: RunConfig, store: RunStore, population: Any, shards: list[Any],
               inference: list[Any], rounds: range, total: int, progress: bool,
               first_step: int = 0, desc: str = "rounds") -> None:
    """The MF-LLM round loop: broadcast → decide → aggregate → record → stop check, once per
    round of ``rounds``, for every simulation of the wave at once. ``population`` is the
    mean-field actor, ``shards`` the agent shards, ``inference`` the model actors (none for a
    run without a model); each round is committed to ``store`` (as step ``first_step + r``)
    before the next starts."""
    text_mf = any(variant(v).keeps_text for v in cfg.sim.variants)
    bar = tqdm(rounds, desc=desc, total=total, initial=rounds.start, disable=not progress)
    made = 0
    t_start = time.perf_counter()
    for r in bar:
        t0 = time.perf_counter()
        # broadcast: every simulation's population state, stored once, read by every shard
        views = population.publish.remote()
        # decide: shards build prompts; the inference actor scores all of them in one order
        requests = [s.requests.remote(r, views) for s in shards]
        # every inference actor reads all requests and answers its own simulations' ones
        scored: list[list[Any]] = [[] for _ in shards]
        for actor in inference:
            answers = ([actor.score_one.remote(requests[0])] if len(shards) == 1 else
                       actor.score_round.options(num_returns=len(shards)).remote(*requests))
            for k, ref in enumerate(answers):
                scored[k].append(ref)
        parts = _get([s.decide.remote(r, views, q, *sc)
                      for s, q, sc in zip(shards, requests, scored, strict=True)])
        t_policy = time.perf_counter() - t0
        decisions = pa.concat_tables(parts).sort_by([("sim_id", "ascending"),
                                                     ("agent_index", "ascending")])
        # aggregate: the mean field sees the round sorted by agent, whatever the sharding
        t1 = time.perf_counter()
        rows = _get(population.update.remote(r, decisions))
        if text_mf:  # the text mean field: one batched, greedy rewrite per simulation
            asks = population.meanfield_requests.remote()
            summaries = {}
            for part in _get([a.summarize.remote(asks, cfg.meanfield.max_new_tokens,
                                                 cfg.meanfield.repetition_penalty)
                              for a in inference]):
                summaries.update(part)
            _get(population.set_summaries.remote(summaries))
            rows = [row | ({"meanfield_text": summaries[row["sim_id"]]}
                           if summaries.get(row["sim_id"]) else {}) for row in rows]
        t_mf = time.perf_counter() - t1
        # record: one atomic commit per round (decisions first, the rounds file last)
        timing = {"t_policy_s": t_policy, "t_meanfield_s": t_mf,
                  "t_total_s": time.perf_counter() - t0}
        run_id = store.run_id
        store.write_round(r, decisions, [row | timing | {"run_id": run_id} for row in rows],
                          step=first_step + r)
        made += decisions.num_rows
        bar.set_postfix(decisions_per_s=f"{made / (time.perf_counter() - t_start):.0f}")
        # stop check: too many failed model calls end the run with a clear message
        _check_failures(cfg, store, r, decisions)


def simulate(cfg: RunConfig, ds: Dataset, run_dir: str | Path, *, resume: bool = False,
             progress: bool = True, max_rounds: int | None = None,
             model: LanguageModel | None = None) -> RunStore:
    """Run (or resume) every simulation of ``cfg`` on Ray and write each round to the store,
    as the run directory's one writer (:class:`~mfray.store.lock.RunLock`).

    ``max_rounds`` stops after that many rounds of this call, leaving the run resumable (an
    injected stop). ``model`` replaces the model named in ``cfg.policy`` (tests).
    """
    lock = RunLock(run_dir)
    try:
        return _simulate(cfg, ds, run_dir, lock, resume, progress, max_rounds, model)
    finally:
        lock.release()


def _simulate(cfg: RunConfig, ds: Dataset, run_dir: str | Path, lock: RunLock, resume: bool,
              progress: bool, max_rounds: int | None, model: LanguageModel | None
              ) -> RunStore:
    say = _status if progress else (lambda message: None)
    # a resumed run is checked before anything slow: its config, and that the data is its own
    stored, then = resumed(cfg, ds, run_dir) if resume else (None, cfg)
    if stored:
        lock.acquire()
    # a resumed run keeps its waves (their steps are its files)
    wave_agents = then.resources.wave_agents
    specs, llm, run_waves = _layout(cfg, ds, model, say, wave_agents)
    total = run_waves[-1].steps.stop
    say("starting Ray" if cfg.resources.address is None else
        f"joining the Ray cluster at {cfg.resources.address}")
    ensure_ray(cfg.resources)
    if llm:
        say("loading the model" + ("" if model else f" ({cfg.policy.model or 'SmolLM2-135M-Instruct'})"))
    inference = [_inference_actor(cfg, ds, run_dir, model, a)
                 for a in range(cfg.resources.inference_actors if llm else 0)]
    # where the run goes on (a resumed run's incomplete or damaged rounds dropped first)
    start = resume_point(stored) if stored else 0
    stop = total if max_rounds is None else min(total, start + max_rounds)
    todo = [(w, steps) for w in run_waves
            if (steps := range(max(start, w.first_step), min(stop, w.steps.stop)))]
    first = None
    try:
        run_id = stored.run_id if stored else uuid.uuid4().hex[:12]
        # the first wave's actors start while the model loads and are placed with it, so a run
        # with no room for them stops after resources.placement_timeout_s
        if todo:
            inputs, references = _wave_inputs(cfg, ds, todo[0][0])
            first = _wave_actors(cfg, ds, run_id, inputs, inference, say)
        model_id = _get(inference[0].model_id.remote()) if inference else "none"
        store = open_store(cfg, ds, run_dir, stored, model_id, len(specs), run_id)
        if not lock.held:
            lock.acquire()
        for wave, steps in todo:
            if wave is not todo[0][0]:
                first = None
                inputs, references = _wave_inputs(cfg, ds, wave)
            store.add_references(references)
            inference = _run_wave(cfg, ds, store, wave, len(run_waves), steps, inference,
                                  (run_dir, model), progress, say, inputs, first)
    finally:
        _kill([*(first.state if first else []), *inference])
    if stop == total:
        store.mark("complete")
    return store


def _wave_inputs(cfg: RunConfig, ds: Dataset, wave: Wave
                 ) -> tuple[tuple[Any, ...], list[dict[str, Any]]]:
    """The wave's agents laid out on the shards and put in the object store (so that lost
    actors can be rebuilt from them), and its references' fits."""
    import ray

    per_shard, metas, world, references = shard_sims(wave.specs, ds, cfg,
                                                     cfg.resources.num_shards)
    return (ray.put(metas), [ray.put(sims) for sims in per_shard], ray.put(world)), references


@dataclass(frozen=True)
class WaveActors:
    """A wave's state actors, placed, and where each runs."""

    population: Any
    shards: list[Any]
    where: list[dict[str, Any]]

    @property
    def state(self) -> list[Any]:
        return [self.population, *self.shards]


def _wave_actors(cfg: RunConfig, ds: Dataset, run_id: str, inputs: tuple[Any, ...],
                 inference: list[Any], say: Any) -> WaveActors:
    """Fresh state actors on a wave's ``inputs``, placed where the cluster has room (a lost
    node's share too)."""
    population, shards = _state_actors(cfg, ds, run_id, inputs)
    try:
        return WaveActors(population, shards, _place(cfg, population, shards, inference, say))
    except BaseException:
        _kill([population, *shards])
        raise


def _run_wave(cfg: RunConfig, ds: Dataset, store: RunStore, wave: Wave, n_waves: int,
              steps: range, inference: list[Any], source: tuple[str | Path, Any],
              progress: bool, say: Any, inputs: tuple[Any, ...],
              actors: WaveActors | None) -> list[Any]:
    """Simulate ``steps`` of one wave on its state actors (``actors``, or fresh ones on
    ``inputs``), rebuilt after a lost actor (at most :data:`MAX_RECOVERIES` times); returns
    the model actors (replaced where lost)."""
    desc = "rounds" if n_waves == 1 else f"wave {wave.index + 1}/{n_waves}"
    try:
        for attempt in range(MAX_RECOVERIES + 1):
            try:
                actors = actors or _wave_actors(cfg, ds, store.run_id, inputs, inference, say)
                store.record_placement(attempt, [row | ({"wave": wave.index} if n_waves > 1
                                                        else {}) for row in actors.where])
                start = max(resume_point(store), wave.first_step) if attempt else steps.start
                if start > wave.first_step:
                    start = _replay(store, actors.population, wave)
                run_rounds(cfg, store, actors.population, actors.shards, inference,
                           range(start - wave.first_step, steps.stop - wave.first_step),
                           wave.rounds, progress, wave.first_step, desc)
                return inference
            except ActorLost as exc:
                _lost(store, exc, attempt, actors.state if actors else [])
                actors = None
                inference = [a if _alive(a) else _inference_actor(cfg, ds, source[0],
                                                                  source[1], k)
                             for k, a in enumerate(inference)]
            except PlacementTimeout as exc:
                store.mark("failed", str(exc))
                raise MfrayError(f"{exc}. Completed rounds are in {store.run_dir}; "
                                 f"`mfray simulate --resume {store.run_dir}` goes on") from None
    finally:
        _kill(actors.state if actors else [])
    raise AssertionError("unreachable: the last attempt returns or raises")  # pragma: no cover


def _status(message: str) -> None:
    """One line on the driver's console, so that a user sees what a run is doing before its
    first round (Ray's start and the references' fits take seconds to a minute)."""
    print(f"mfray: {message}", file=sys.stderr, flush=True)


def _layout(cfg: RunConfig, ds: Dataset, model: LanguageModel | None, say: Any,
            wave_agents: int) -> tuple[list[SimSpec], bool, list[Wave]]:
    """The run's simulations and their waves, before Ray starts, and whether they need a model
    (checked here, in the driver, so that a missing one fails at once)."""
    from mfray.llm.build import check_model
    from mfray.llm.distill import load_distilled

    specs = plan(cfg, ds)
    run_waves = waves(specs, wave_agents, cfg.sim.round_size)
    if cfg.resources.address is None and not os.environ.get("RAY_ADDRESS"):
        check_memory(run_waves, _free_memory())  # a local run: all of it on this machine
    llm = any(variant(s.variant).needs_model for s in specs)
    if llm and model is None:
        check_model(cfg.policy, cfg.resources)
    if cfg.policy.distilled:  # mf-distilled's, loaded by the shards: read once here
        load_distilled(cfg.policy.distilled)
    rounds = max(w.rounds for w in run_waves)
    fits = any(variant(s.variant).needs_fit for s in specs)
    say(f"{len(specs)} simulations of {rounds} rounds at most"
        + (f", in {len(run_waves)} waves of at most {wave_agents:,} agents (resources."
           "wave_agents)" if len(run_waves) > 1 else "")
        + ("; fitting the references on the training events" if fits else ""))
    return specs, llm, run_waves


def _free_memory() -> int:
    """Bytes of memory this machine can give (its page cache included)."""
    import psutil

    return psutil.virtual_memory().available


#: times a run rebuilds its actors after losing one, before it stops (resumable)
MAX_RECOVERIES = 3


class ActorLost(MfrayError):
    """A Ray actor of the run died (its process, its node); the run rebuilds them."""


def _state_actors(cfg: RunConfig, ds: Dataset, run_id: str, inputs: tuple[Any, ...]
                  ) -> tuple[Any, list[Any]]:
    """The mean-field actor and the agent shards, fresh (their state is rebuilt by replay),
    being started."""
    metas, per_shard, world = inputs
    # round the nodes after the model actors' (:func:`_inference_actor`)
    nodes, first = nodes_with("CPU"), 0 if _gpu_models(cfg) else cfg.resources.inference_actors
    population = spread(Population, nth(nodes, first)).remote(metas, ds.label_space, cfg.sim)
    shards = [spread(AgentShard, nth(nodes, first + 1 + i)).remote(
        sims, ds.label_space, cfg.sim, run_id, world, cfg.policy.mode, cfg.policy.distilled)
        for i, sims in enumerate(per_shard)]
    return population, shards


def _alive(actor: Any, timeout_s: float = 60.0) -> bool:
    import ray

    try:
        ray.get(actor.model_id.remote(), timeout=timeout_s)
        return True
    except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
        ray.kill(actor)
        return False


def _kill(actors: list[Any]) -> None:
    import ray

    for actor in actors:
        if actor is not None:
            ray.kill(actor)


def _place(cfg: RunConfig, population: Any, shards: list[Any], inference: list[Any],
           say: Any) -> list[dict[str, Any]]:
    """Wait until the run's actors are placed and started (:func:`wait_placed`) and return
    where each runs; said when they span several nodes."""
    named = {"meanfield": population, **{f"shard-{i}": s for i, s in enumerate(shards)},
             **{f"model-{k}": a for k, a in enumerate(inference)}}
    needs = {f"model-{k}": {"GPU": 1} for k in range(len(inference))} if inference and \
        _gpu_models(cfg) else {}
    # a run that waits for room says so, also without progress output
    refs = wait_placed(named, needs, cfg.resources.placement_timeout_s, _status)
    rows = [{"actor": name} | row for name, row in zip(refs, _get(list(refs.values())),
                                                       strict=True)]
    if len({r["node_id"] for r in rows}) > 1:
        say(summary(rows))
    return rows


def _gpu_models(cfg: RunConfig) -> bool:
    """Whether the model actors take a GPU each: a local model on a cluster with enough."""
    import ray

    n = cfg.resources.inference_actors
    return cfg.policy.url is None and ray.cluster_resources().get("GPU", 0) >= n


def _inference_actor(cfg: RunConfig, ds: Dataset, run_dir: str | Path,
                     model: LanguageModel | None, a: int) -> Any:
    """Inference actor ``a`` of ``resources.inference_actors``: it serves the simulations
    whose ``sim_id ≡ a`` (mod their number), so a simulation's prompts, and the prefixes they
    share, always meet the same model. One GPU each where the cluster has one per actor."""

    from mfray.engine.inference import InferenceServer

    n = cfg.resources.inference_actors
    # (any explicit resource also makes an actor hold a CPU for its lifetime: none here)
    gpus = _gpu_models(cfg)
    actor = spread(InferenceServer, nth(nodes_with("GPU" if gpus else "CPU"), a),
                   **({"num_gpus": 1, "num_cpus": 0} if gpus else {}))
    name = "prompts.jsonl" if n == 1 else f"prompts-{a}.jsonl"
    log = str(Path(run_dir) / name) if cfg.policy.log_prompts else None
    return actor.remote(cfg.policy, ds.label_space, cfg.sim.data, model, log,
                        cfg.meanfield.adapter, part=(a, n), resources=cfg.resources)


def _lost(store: RunStore, exc: ActorLost, attempt: int, state: list[Any]) -> None:
    """After losing an actor: give up (the run stays resumable) at the last attempt, or else
    say so and kill the state actors, which the next attempt rebuilds from the store."""
    if attempt == MAX_RECOVERIES:
        store.mark("failed", str(exc))
        raise MfrayError(f"{exc}; gave up after {MAX_RECOVERIES} rebuilds. "
                         f"Completed rounds are in {store.run_dir}") from None
    print(f"mfray: {exc}; rebuilding the run's actors from the store "
          f"({attempt + 1}/{MAX_RECOVERIES})", file=sys.stderr)
    _kill(state)


def _replay(store: RunStore, population: Any, wave: Wave) -> int:
    """Rebuild the wave's population state from its stored decisions and return the first
    step still to run."""
    done = [s for s in store.completed_rounds() if s in wave.steps]
    if not done:
        return wave.first_step
    table = store.read_decisions(steps=done)
    rows = store.read_rounds(columns=["sim_id", "round", "meanfield_text"], steps=done)
    # every simulation's last stored mean field: the population restores the text mean field
    # of the simulations that keep one from it
    last = {r["sim_id"]: r["meanfield_text"]
            for r in sorted(rows.to_pylist(), key=lambda r: r["round"])}
    rounds = [s - wave.first_step for s in done]
    _get(population.replay.remote([(r, table.filter(pc.equal(table["round"], r)))
                                   for r in rounds], last))
    return max(done) + 1


def _get(refs: Any) -> Any:
    """``ray.get``, with mfray's own errors raised in an actor re-raised as themselves, and a
    lost actor (also one whose answer another actor was waiting for) as :class:`ActorLost`."""
    import ray

    # an actor's death, or its node's with the objects on it
    lost = (ray.exceptions.RayActorError, ray.exceptions.ObjectLostError,
            ray.exceptions.NodeDiedError)
    try:
        return ray.get(refs)
    except ray.exceptions.RayTaskError as exc:
        if isinstance(exc.cause, MfrayError):
            raise exc.cause from None
        if isinstance(exc, lost) or isinstance(exc.cause, lost):
            raise ActorLost(f"a Ray actor of the run died: {_first_line(exc.cause)}") from exc
        raise
    except lost as exc:
        raise ActorLost(f"a Ray actor of the run died: {_first_line(exc)}") from exc


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def _check_failures(cfg: RunConfig, store: RunStore, r: int, decisions: pa.Table) -> None:
    asked = pc.sum(pc.is_valid(decisions["template_hash"])).as_py() or 0
    failed = decisions.filter(pc.invert(decisions["ok"]))
    if asked and failed.num_rows / asked > cfg.sim.max_failure_rate:
        message = (f"round {r}: {failed.num_rows} of {asked} model decisions failed "
                   f"({failed.num_rows / asked:.0%} > sim.max_failure_rate "
                   f"{cfg.sim.max_failure_rate:.0%}); first error: {failed['error'][0].as_py()}")
        store.mark("failed", message)
        raise MfrayError(message + f". The run stopped; completed rounds are in {store.run_dir}")
