"""IB-Tune on Ray Train: one ``TorchTrainer`` (Train V2) per training run.

The driver builds the examples (:mod:`mfray.train.data`), then starts ``resources.num_workers``
workers (one per GPU on a cluster, CPU processes here; 0 runs in-process). Every worker loads
the base model, adds LoRA (peft), and takes its share of each global batch: the loss is scaled
so that DDP's gradient mean equals the gradient of the global batch's mean loss, whatever the
number of workers. Checkpoints (adapter, optimizer, schedule, step, loss history) go through
``ray.train.Checkpoint`` every ``train.checkpoint_every`` steps; a run started again with the
same output directory resumes from the latest one. The adapter lands in ``OUT/adapter`` (peft
format), the history in ``OUT/metrics.jsonl`` and the loss curve in ``OUT/loss.png``.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, Self

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from mfray.config import RunConfig, from_dict, stored_config
from mfray.data.mix import mix_events, source_event
from mfray.data.schema import Dataset, read_dataset
from mfray.engine.population import TEXT_MEANFIELD
from mfray.engine.ray_env import ensure_ray
from mfray.errors import ConfigError, MfrayError
from mfray.meanfield import reorder_tally
from mfray.schedule import build_units
from mfray.train.config import TrainConfig
from mfray.train.data import build_examples, read_examples, rollout_feed, write_examples

STATE_FILE = "state.json"
VAL_FILE = "policy-val.parquet"  # under OUT/examples: train.val_examples


# ------------------------------------------------------------------------------ examples


def training_events(cfg: TrainConfig, ds: Dataset) -> list[str]:
    """The events examples come from: the config's units, less the held-out ones. Resampled
    copies (``mfray data mix``) are evaluation events: left out unless ``sim.events`` names
    them, and a copy is its source event here, so holding out either holds out both."""
    known = ds.event_ids()
    missing = [e for e in cfg.train.held_out if e not in known]
    if missing:
        raise ConfigError(f"train.held_out: unknown event(s) {missing}; the dataset has {known}")
    held = {source_event(e) for e in cfg.train.held_out}
    events = [u.event_id for u in build_units(ds, replace(cfg.sim, unit="event"))]
    kept = [e for e in dict.fromkeys(events) if source_event(e) not in held
            and (source_event(e) == e or e in cfg.sim.events)]
    if not kept:
        raise ConfigError("no training events left: check sim.events, sim.min_replies and "
                          "train.held_out")
    return kept


def prepare_examples(cfg: TrainConfig, ds: Dataset, out: Path, kind: str,
                     summarize: Any = None) -> Path:
    """Build, subsample (seeded) and write the examples of ``kind`` (policy | meanfield)."""
    for name in ("onpolicy_runs", "tally_orders"):
        if getattr(cfg.train, name) and kind != "policy":
            raise ConfigError(f"train.{name} is for policy examples; mfray train meanfield "
                              "takes none")
    run = RunConfig(sim=cfg.sim, policy=cfg.policy, meanfield=cfg.meanfield)
    if summarize is None and cfg.train.prompt_variant in TEXT_MEANFIELD:
        summarize = _summarizer(cfg, ds)
    events = training_events(cfg, ds)
    if cfg.train.mix_copies:
        ds, events = mix_events(ds, events, cfg.train.mix_copies, alpha=cfg.train.mix_alpha,
                                seed=cfg.train.seed,
                                min_agents=max(cfg.sim.min_replies, 4 * cfg.sim.round_size))
        if not events:
            raise MfrayError("train.mix_copies: no training event has enough labelled replies "
                             "for a resampled copy")
    policy, meanfield = build_examples(run, ds, cfg.train.prompt_variant,
                                       events=events, summarize=summarize,
                                       from_agent=cfg.train.from_agent, progress=True)
    if cfg.train.onpolicy_runs:
        policy = pa.concat_tables([policy, *_onpolicy_examples(cfg, run, ds, events,
                                                               summarize)])
    table = policy if kind == "policy" else meanfield
    if table.num_rows == 0:
        raise MfrayError(f"no {kind} examples: the training events have no labelled replies")
    if kind == "policy" and cfg.train.val_examples:
        if table.num_rows < 2:
            raise MfrayError(f"train.val_examples: only {table.num_rows} example(s), none to "
                             "spare")  # at least one example stays for training
        val, table = _draw(table, min(cfg.train.val_examples, table.num_rows - 1),
                           [cfg.train.seed, 1])
        write_examples(val, out / "examples" / VAL_FILE)
    n = cfg.train.max_examples
    if n is not None and n < table.num_rows:
        table, _ = _draw(table, n, cfg.train.seed)
    if cfg.train.tally_orders:
        table = tally_orders(table, cfg.train.tally_orders, [cfg.train.seed, 2])
    return write_examples(table, out / "examples" / f"{kind}.parquet")


def _onpolicy_examples(cfg: TrainConfig, run: RunConfig, ds: Dataset, events: list[str],
                       summarize: Any) -> list[pa.Table]:
    """The policy examples of ``train.onpolicy_runs``: each run's rollout agents, shown the
    mean field that run built from its own actions, labelled with their real actions."""
    variant = cfg.train.prompt_variant
    tables = []
    for run_dir in cfg.train.onpolicy_runs:
        feed, ran = rollout_feed(run_dir, variant)
        if ran.get("meanfield_update", "draws") != "draws":
            raise ConfigError(f"train.onpolicy_runs: {run_dir} ran with sim.meanfield_update="
                              f"{ran['meanfield_update']!r}; on-policy examples replay the "
                              "run's drawn actions, so they rebuild a mean field of draws: "
                              "simulate the run with the default 'draws'")
        for key in ("round_size", "unit"):  # the rollout's rounds must be this run's rounds
            if ran[key] != getattr(cfg.sim, key):
                raise ConfigError(f"train.onpolicy_runs: {run_dir} ran with sim.{key}="
                                  f"{ran[key]!r}, this training has {getattr(cfg.sim, key)!r}")
        fed = sorted({event for event, _ in feed})
        outside = [e for e in fed if e not in events]
        if outside:
            raise ConfigError(f"train.onpolicy_runs: {run_dir} simulated {outside}, which are "
                              f"not training events of this run ({', '.join(events)})")
        policy, _ = build_examples(run, ds, variant, events=fed, summarize=summarize,
                                   from_agent=max(ran["warmup"], cfg.train.from_agent), feed=feed,
                                   progress=True)
        print(f"on-policy examples: {policy.num_rows} from {run_dir} ({len(fed)} events)")
        tables.append(policy)
    return tables


def tally_orders(table: pa.Table, k: int, seed: Any) -> pa.Table:
    """Each example of ``table`` ``k`` times (copies together), each copy's prompt with the
    tally's words in an order drawn from ``seed``."""
    rng = np.random.default_rng(seed)
    out = table.take(pa.array(np.repeat(np.arange(table.num_rows), k)))
    prompts = [reorder_tally(p, rng) for p in out.column("prompt").to_pylist()]
    return out.set_column(out.schema.get_field_index("prompt"), "prompt",
                          pa.array(prompts, pa.string()))


def _draw(table: pa.Table, n: int, seed: Any) -> tuple[pa.Table, pa.Table]:
    """``n`` rows of ``table`` drawn by a seeded permutation, and the rest (both in order)."""
    order = np.random.default_rng(seed).permutation(table.num_rows)
    return (table.take(pa.array(np.sort(order[:n]))),
            table.take(pa.array(np.sort(order[n:]))))


def _summarizer(cfg: TrainConfig, ds: Dataset) -> Any:
    """The simulator's text mean field (the current mean-field model, greedy and bounded), so
    the examples carry the summaries a simulation would show."""
    from mfray.engine.inference import InferenceServer

    server = InferenceServer(cfg.policy, ds.label_space, cfg.sim.data,
                             meanfield_adapter=cfg.meanfield.adapter, resources=cfg.resources)
    return lambda requests: server.summarize(requests, cfg.meanfield.max_new_tokens,
                                             cfg.meanfield.repetition_penalty)


# ------------------------------------------------------------------------------ schedule


def total_steps(n_examples: int, cfg: TrainConfig) -> int:
    per_epoch = math.ceil(n_examples / cfg.train.batch_size)
    steps = per_epoch * cfg.train.epochs
    return min(steps, cfg.train.max_steps) if cfg.train.max_steps else steps


def global_batch(step: int, n_examples: int, cfg: TrainConfig) -> np.ndarray:
    """Example indices of a global step: a seeded permutation per epoch, cut in batches."""
    per_epoch = math.ceil(n_examples / cfg.train.batch_size)
    epoch, k = divmod(step, per_epoch)
    order = np.random.default_rng([cfg.train.seed, epoch]).permutation(n_examples)
    return order[k * cfg.train.batch_size:(k + 1) * cfg.train.batch_size]


def lr_factor(step: int, total: int, cfg: TrainConfig) -> float:
    """Linear warm-up, then linear or cosine decay to 0 (or constant)."""
    warm = int(cfg.train.warmup_ratio * total)
    if step < warm:
        return (step + 1) / warm
    if cfg.train.schedule == "constant":
        return 1.0
    progress = (step - warm) / max(1, total - warm)
    if cfg.train.schedule == "linear":
        return max(0.0, 1.0 - progress)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


# ------------------------------------------------------------------------------ worker


def _worker(config: dict[str, Any]) -> None:
    """The training loop of one Ray Train worker (policy or mean-field model)."""
    import ray.train
    import torch

    from mfray.train.tasks import make_task

    cfg = from_dict(TrainConfig, config["cfg"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.manual_seed(cfg.train.seed)
    # Ray starts workers with one OpenMP thread; a CPU worker gets its share of the cores
    if not cfg.resources.use_gpu:
        torch.set_num_threads(int(config.get("num_threads") or
                                  max(1, (os.cpu_count() or 1) // max(1, world))))
    device = ray.train.torch.get_device() if cfg.resources.use_gpu else torch.device("cpu")
    task = make_task(config["kind"], cfg, read_examples(config["examples"]), device)
    params = [p for p in task.model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    total = total_steps(task.n_examples, cfg)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, total, cfg))
    step, history = 0, []
    ckpt = ray.train.get_checkpoint()  # Ray's restore after a worker failure
    if ckpt is None and config.get("resume_from"):  # a rerun of a stopped run
        ckpt = ray.train.Checkpoint.from_directory(config["resume_from"])
    if ckpt:
        with ckpt.as_directory() as d:
            task.load_adapter(Path(d) / "adapter")
            opt.load_state_dict(torch.load(Path(d) / "optimizer.pt", weights_only=True))
            sched.load_state_dict(torch.load(Path(d) / "scheduler.pt", weights_only=True))
            state = json.loads((Path(d) / STATE_FILE).read_text())
            step, history = state["step"], state["history"]
    skipped = history[-1].get("skipped_steps", 0) if history else 0
    # the run directory's live history: rank 0 rewrites it from the restored state, then
    # appends a row per step (the driver's progress bar follows it; _finish rewrites it from
    # the last checkpoint)
    live = Path(config["metrics"]) if rank == 0 and config.get("metrics") else None
    if live is not None:
        try:  # rank 0 on another node writes its own copy (as it does its checkpoints)
            live.parent.mkdir(parents=True, exist_ok=True)
            live.write_text("".join(json.dumps(r) + "\n" for r in history), encoding="utf-8")
        except OSError:
            live = None
    model = task.model
    if world > 1:
        model = ray.train.torch.prepare_model(model, move_to_device=False)
    t0, seen = time.perf_counter(), 0
    while step < total:
        batch = global_batch(step, task.n_examples, cfg)
        mine = batch[rank::world]
        opt.zero_grad(set_to_none=True)
        loss_sum, extra = task.loss(model, mine)  # the sum over this worker's examples
        (loss_sum * world / len(batch)).backward()
        norm = torch.nn.utils.clip_grad_norm_(params, cfg.train.max_grad_norm)
        if torch.isfinite(norm):
            opt.step()
        else:  # a NaN/inf gradient would poison the adapter: the step is skipped and counted
            skipped += 1
        sched.step()
        step += 1
        seen += len(batch)
        stats = torch.tensor([float(loss_sum.detach()), *extra], dtype=torch.float64)
        if world > 1:
            torch.distributed.all_reduce(stats)
        row = {"step": step, "loss": float(stats[0]) / len(batch), "lr": sched.get_last_lr()[0],
               "grad_norm": float(norm), "skipped_steps": skipped,
               "examples_per_s": seen / max(1e-9, time.perf_counter() - t0)}
        row |= {name: float(v) / len(batch) for name, v in zip(task.extra_names, stats[1:],
                                                               strict=True)}
        history.append(row)
        if live is not None:
            with open(live, "a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")
        if rank == 0 and (step % cfg.train.log_every == 0 or step == total):
            print(f"[{config['kind']}] step {step}/{total}  loss {row['loss']:.4f}  "
                  f"lr {row['lr']:.2e}  {row['examples_per_s']:.2f} examples/s"
                  + (f"  {skipped} skipped (non-finite gradient)" if skipped else ""), flush=True)
        # Only checkpoints are reported: Ray Train takes one report per poll of its controller
        # (every 2 s), so reporting every few steps throttled a GPU run to ~2 s per report
        if step % cfg.train.checkpoint_every == 0 or step == total:
            _checkpoint(task, opt, sched, step, history, rank, Path(config["checkpoints"]))
        if config.get("fail_at_step") == step:  # fault injection for the resume test
            raise RuntimeError(f"injected failure after step {step}")


def _checkpoint(task: Any, opt: Any, sched: Any, step: int, history: list[dict[str, Any]],
                rank: int, root: Path, keep: int = 2) -> None:
    """Rank 0 writes the checkpoint to ``root/step-N`` (kept: Ray's local mode reads it in
    place; with workers Ray also copies it to its storage) and every rank reports."""
    import ray.train
    import torch

    ckpt = None
    if rank == 0:
        d = root / f"step-{step:07d}"
        tmp = root / f".tmp-step-{step:07d}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        task.save_adapter(tmp / "adapter")
        torch.save(opt.state_dict(), tmp / "optimizer.pt")
        torch.save(sched.state_dict(), tmp / "scheduler.pt")
        (tmp / STATE_FILE).write_text(json.dumps({"step": step, "history": history}))
        shutil.rmtree(d, ignore_errors=True)
        tmp.rename(d)  # a checkpoint directory is complete or absent
        for old in sorted(root.glob("step-*"))[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
        ckpt = ray.train.Checkpoint.from_directory(str(d))
    ray.train.report(history[-1], checkpoint=ckpt)


def latest_checkpoint(out: Path) -> Path | None:
    """The checkpoint with the most steps under ``out`` (ours or Ray's copies), if any."""
    best: tuple[int, Path] | None = None
    for state in out.glob("**/" + STATE_FILE):
        try:
            step = int(json.loads(state.read_text())["step"])
        except (OSError, ValueError, KeyError):
            continue  # an unreadable checkpoint is skipped, never half-loaded
        if (state.parent / "adapter" / "adapter_config.json").is_file() and \
                (best is None or step > best[0]):
            best = (step, state.parent)
    return best[1] if best else None


# ------------------------------------------------------------------------------ driver


def absolute_paths(cfg: TrainConfig) -> TrainConfig:
    """The config with its local relative paths (data, models, adapters) made absolute: Ray
    Train's workers do not run in the driver's working directory. A name that is not a local
    path (a hub id, ``scripted``) is left as it is."""
    def local(p: str | None) -> str | None:
        if p is None or not Path(p).expanduser().exists():
            return p
        return str(Path(p).expanduser().resolve())

    return replace(cfg, sim=replace(cfg.sim, data=local(cfg.sim.data)),
                   policy=replace(cfg.policy, model=local(cfg.policy.model),
                                  adapter=local(cfg.policy.adapter)),
                   meanfield=replace(cfg.meanfield, adapter=local(cfg.meanfield.adapter)),
                   train=replace(cfg.train, policy_adapter=local(cfg.train.policy_adapter)))


def train(cfg: TrainConfig, kind: str, out: str | Path, *, ds: Dataset | None = None,
          summarize: Any = None, fail_at_step: int | None = None,
          num_threads: int | None = None) -> Path:
    """Build the examples (unless ``OUT/examples`` has them: a resumed run reuses them), run
    the ``TorchTrainer``, and write the adapter, the history and the loss curve to ``out``."""
    import ray.train
    from ray.train.torch import TorchTrainer

    if kind not in ("policy", "meanfield"):
        raise ConfigError(f"unknown training kind {kind!r}: policy or meanfield")
    cfg, out = _start(cfg, out)
    examples = out / "examples" / f"{kind}.parquet"
    if not examples.is_file():
        data = ds if ds is not None else read_dataset(cfg.sim.data)
        examples = prepare_examples(cfg, data, out, kind, summarize)
    ensure_ray(cfg.resources)
    resume = latest_checkpoint(out)
    trainer = TorchTrainer(
        _worker,
        train_loop_config={"cfg": cfg.to_dict(), "kind": kind, "examples": str(examples),
                           "fail_at_step": fail_at_step, "num_threads": num_threads,
                           "checkpoints": str(out / "checkpoints"),
                           "metrics": str(out / "metrics.jsonl"),
                           "resume_from": str(resume) if resume else None},
        scaling_config=ray.train.ScalingConfig(num_workers=cfg.resources.num_workers,
                                               use_gpu=cfg.resources.use_gpu),
        run_config=ray.train.RunConfig(name=kind, storage_path=str(out / "ray"),
                                       failure_config=ray.train.FailureConfig(max_failures=0)))
    # metrics.jsonl starts as the history of the checkpoint the run resumes from (empty for
    # a new run), not as the rows a failed attempt wrote after it
    restored = json.loads((resume / STATE_FILE).read_text())["history"] if resume else []
    (out / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in restored),
                                       encoding="utf-8")
    if resume is not None:
        print(f"resuming from {resume}")
    total = total_steps(pq.ParquetFile(examples).metadata.num_rows, cfg)
    try:
        with LiveProgress(out / "metrics.jsonl", total, f"train {kind}"):
            result = trainer.fit()
    except Exception as exc:  # Ray wraps the worker's error; keep its first line
        first = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise MfrayError(f"training failed: {first}. Run the same command again to resume "
                         f"from the last checkpoint in {out / 'ray'}") from exc
    adapter = _finish(result.checkpoint, out)
    if kind == "policy" and (out / "examples" / VAL_FILE).is_file():
        validate(cfg, out)
    return adapter


def train_classifier(cfg: TrainConfig, out: str | Path, *, ds: Dataset | None = None) -> Path:
    """Fit a prompt classifier (:mod:`mfray.classifier`) on the policy examples that ``mfray
    train policy`` would tune on (same events, draws and validation split), one model per
    option set; write ``OUT/classifier.json`` and, with ``train.val_examples``,
    ``OUT/validation.json`` (its loss against the training label frequencies)."""
    from mfray.classifier import CLASSIFIER_FILE, ClassifierModel, fit_option_model

    if cfg.train.prompt_variant in TEXT_MEANFIELD:
        raise ConfigError(f"a prompt classifier reads the prompts of a numeric or no mean "
                          f"field; train.variant={cfg.train.variant} writes a summary with an "
                          "LLM")
    if cfg.policy.mode != "choice":
        raise ConfigError("a prompt classifier chooses among options: use policy.mode=choice")
    cfg, out = _start(cfg, out)
    data = ds if ds is not None else read_dataset(cfg.sim.data)
    table = read_examples(prepare_examples(cfg, data, out, "policy"))
    models = []
    for opts, rows in _by_options(table).items():
        models.append(fit_option_model(rows["prompt"].to_pylist(),
                                       rows["label_index"].to_pylist(), opts,
                                       rows["event_id"].to_pylist(), progress=True))
        print(f"fitted {list(opts)} on {rows.num_rows} examples of "
              f"{len(set(rows['event_id'].to_pylist()))} events "
              f"(L2 weight C = {models[-1].c:g}, {len(models[-1].vocabulary)} features)")
    model = ClassifierModel(models)
    path = model.save(out / CLASSIFIER_FILE)
    if (out / "examples" / VAL_FILE).is_file():
        val = read_examples(out / "examples" / VAL_FILE)
        nll = _mean_nll(val, lambda opts, rows: model.score(rows["prompt"].to_pylist(), opts))
        report = {"examples": val.num_rows, "events": sorted(set(val["event_id"].to_pylist())),
                  "loss": {"classifier": nll, "label_frequencies": _constant_nll(table, val)}}
        (out / "validation.json").write_text(json.dumps(report, indent=2))
    return path


def _by_options(table: pa.Table) -> dict[tuple[str, ...], pa.Table]:
    """The rows of ``table`` per option set, in order of first appearance."""
    groups: dict[tuple[str, ...], list[int]] = {}
    for i, opts in enumerate(table["options"].to_pylist()):
        groups.setdefault(tuple(opts), []).append(i)
    return {opts: table.take(pa.array(idx)) for opts, idx in groups.items()}


def _start(cfg: TrainConfig, out: str | Path) -> tuple[TrainConfig, Path]:
    """The config with absolute paths and the output directory, made; a directory that holds
    a run of another config is refused, and the config is saved as ``train_config.json``."""
    cfg = absolute_paths(cfg)
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    saved = out / "train_config.json"
    if saved.is_file() and stored_config(TrainConfig, json.loads(saved.read_text()), saved) != cfg:
        raise MfrayError(f"{out} holds a training run with another config; use a new directory")
    saved.write_text(json.dumps(cfg.to_dict(), indent=2, sort_keys=True))
    return cfg, out


class LiveProgress:
    """A progress bar that follows ``metrics.jsonl`` while Ray Train runs: rank 0 appends a
    row per step there, and the workers' own output does not reach the driver (mfray starts
    Ray with ``log_to_driver`` off). It shows the step, the mean loss of the last 8 steps and
    the examples/s; it polls once a second and reads the file a last time on exit."""

    def __init__(self, path: Path, total: int, desc: str, poll_s: float = 1.0) -> None:
        from tqdm import tqdm

        self.path, self.poll_s, self._size = path, poll_s, -1
        self.bar = tqdm(total=total, desc=desc, unit="step")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._follow, daemon=True)

    def __enter__(self) -> Self:
        self.update()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.update()
        self.bar.close()

    def _follow(self) -> None:
        while not self._stop.wait(self.poll_s):
            self.update()

    def update(self) -> None:
        try:
            text = self.path.read_text(encoding="utf-8")
        except OSError:
            return  # not written yet (or on another node's disk)
        if len(text) == self._size:
            return
        self._size = len(text)
        rows = []
        for line in text.splitlines(keepends=True):
            if line.endswith("\n"):  # a line being written is read next time
                try:
                    rows.append(json.loads(line))
                except ValueError:
                    continue
        if not rows:
            return
        last = rows[-1]
        losses = np.array([r["loss"] for r in rows[-8:]], dtype=float)
        losses = losses[np.isfinite(losses)]
        self.bar.n = int(last["step"])
        postfix = {"loss": f"{losses.mean():.4f}" if losses.size else "nan",
                   "examples_per_s": f"{last['examples_per_s']:.2f}"}
        if last.get("skipped_steps"):
            postfix["skipped"] = last["skipped_steps"]
        self.bar.set_postfix(postfix, refresh=False)
        self.bar.refresh()


def _finish(checkpoint: Any, out: Path) -> Path:
    if checkpoint is None:
        raise MfrayError("training ended without a checkpoint")
    with checkpoint.as_directory() as d:
        adapter = out / "adapter"
        shutil.rmtree(adapter, ignore_errors=True)
        shutil.copytree(Path(d) / "adapter", adapter)
        history = json.loads((Path(d) / STATE_FILE).read_text())["history"]
    with open(out / "metrics.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in history)
    plot_history(history, out / "loss.png")
    skipped = history[-1].get("skipped_steps", 0) if history else 0
    if history and skipped == len(history):
        raise MfrayError(f"every one of the {skipped} steps had a non-finite gradient and was "
                         f"skipped: the adapter in {adapter} is untrained (see metrics.jsonl)")
    return adapter


def validate(cfg: TrainConfig, out: Path) -> dict[str, Any]:
    """Score the validation examples (``train.val_examples``, unseen in training) with the
    tuned adapter and with the base model (a fresh LoRA adapter is the base model), with the
    training loss; in choice mode also with a constant: the training examples' label
    frequencies (add-one smoothed). Writes and returns ``OUT/validation.json``."""
    import torch
    from tqdm import tqdm

    from mfray.train.tasks import PolicyTask

    val = read_examples(out / "examples" / VAL_FILE)
    device = "cuda" if cfg.resources.use_gpu and torch.cuda.is_available() else "cpu"
    task = PolicyTask(cfg, val, torch.device(device))
    task.model.eval()

    def score(which: str) -> tuple[float, float | None]:
        loss, correct = 0.0, 0.0
        with torch.no_grad():
            for i in tqdm(range(0, task.n_examples, cfg.train.batch_size),
                          desc=f"validate {which}", unit="batch"):
                total, extra = task.loss(task.model, range(i, min(task.n_examples,
                                                                  i + cfg.train.batch_size)))
                loss += float(total)
                correct += extra[0] if extra else 0.0
        acc = correct / task.n_examples if task.mode == "choice" else None
        return loss / task.n_examples, acc

    base = score("base model")
    task.load_adapter(out / "adapter")
    tuned = score("tuned")
    report: dict[str, Any] = {
        "examples": task.n_examples, "events": sorted(set(val["event_id"].to_pylist())),
        "loss": {"tuned": tuned[0], "base": base[0]},
        "accuracy": {"tuned": tuned[1], "base": base[1]}}
    if task.mode == "choice":
        report["loss"]["label_frequencies"] = _constant_nll(
            read_examples(out / "examples" / "policy.parquet"), val)
    (out / "validation.json").write_text(json.dumps(report, indent=2))
    return report


def _constant_nll(train: pa.Table, val: pa.Table) -> float:
    """Mean NLL of ``val``'s labels under the label frequencies of ``train`` (per option set,
    add-one smoothed): what a policy that ignores every input would score."""
    freq = {opts: np.bincount(rows["label_index"].to_numpy(), minlength=len(opts)) + 1.0
            for opts, rows in _by_options(train).items()}

    def log_probs(opts: tuple[str, ...], rows: pa.Table) -> np.ndarray:
        f = freq.get(opts, np.ones(len(opts)))
        return np.broadcast_to(np.log(f / f.sum()), (rows.num_rows, len(opts)))

    return _mean_nll(val, log_probs)


def _mean_nll(val: pa.Table, log_probs: Callable[[tuple[str, ...], pa.Table], np.ndarray]
              ) -> float:
    """Mean NLL of ``val``'s labels, ``log_probs(options, rows)`` giving each option set's
    rows their option log-probabilities."""
    nll = 0.0
    for opts, rows in _by_options(val).items():
        logp = log_probs(opts, rows)
        nll -= float(logp[np.arange(rows.num_rows), rows["label_index"].to_numpy()].sum())
    return nll / val.num_rows


def validation_summary(report: dict[str, Any]) -> str:
    """One line for the command's summary, of an adapter's ``validation.json`` (``tuned`` and
    ``base`` losses) or of a classifier's (``classifier``)."""
    loss = report["loss"]
    key, what = ("tuned", "adapter") if "tuned" in loss else ("classifier", "classifier")
    text = (f"validation ({report['examples']} unseen examples of the training events): loss "
            f"{loss[key]:.4f} {key}"
            + (f", {loss['base']:.4f} base model" if "base" in loss else ""))
    if "label_frequencies" in loss:
        const = loss["label_frequencies"]
        text += (f", {const:.4f} the training label frequencies (a constant): the {what} "
                 + ("beats" if loss[key] < const else "does not beat") + " the constant")
    return text


def loss_summary(history: list[dict[str, Any]], n: int = 8) -> str:
    """The loss at the start and at the end of training, each the mean of ``n`` steps (fewer
    when the run is short, so that the two never overlap): one step's batch is too noisy to
    say whether a run learnt. Non-finite losses are left out of the means."""
    losses = np.array([r["loss"] for r in history], dtype=float)
    if losses.size == 0:
        return "no steps"
    k = max(1, min(n, losses.size // 2))

    def mean(xs: np.ndarray) -> str:
        finite = xs[np.isfinite(xs)]
        return f"{finite.mean():.4f}" if finite.size else "nan"

    if losses.size == 1:
        return f"loss {mean(losses)} (one step)"
    return f"loss {mean(losses[:k])} -> {mean(losses[-k:])} (mean of the first and last {k} steps)"


def plot_history(history: list[dict[str, Any]], path: Path) -> Path:
    """The loss curve (raw and a moving average) and the learning rate."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = np.array([r["step"] for r in history])
    loss = np.array([r["loss"] for r in history])
    w = max(1, len(loss) // 20)
    avg = np.convolve(loss, np.ones(w) / w, mode="valid")
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.5))
    a.plot(steps, loss, alpha=0.35, label="loss")
    a.plot(steps[len(steps) - len(avg):], avg, label=f"moving average ({w})")
    a.set_xlabel("step")
    a.set_ylabel("loss")
    a.legend()
    b.plot(steps, [r["lr"] for r in history])
    b.set_xlabel("step")
    b.set_ylabel("learning rate")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
