"""The Ray Train side of IB-Tune: the training loop each worker runs, its schedule (global
batches and learning rate, the same on every worker) and its checkpoints.

Every worker loads the base model, adds LoRA (peft), and takes its share of each global batch:
the loss is scaled so that DDP's gradient mean equals the gradient of the global batch's mean
loss, whatever the number of workers. Checkpoints (adapter, optimizer, schedule, step, loss
history) go through ``ray.train.Checkpoint`` every ``train.checkpoint_every`` steps.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from mfray.config import from_dict
from mfray.train.config import TrainConfig
from mfray.train.data import read_examples

STATE_FILE = "state.json"


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



def train_loop(config: dict[str, Any]) -> None:
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
    step, history = _restore(config, task, opt, sched)
    skipped = history[-1].get("skipped_steps", 0) if history else 0
    live = _live_history(config, rank, history)
    model = task.model
    if world > 1:
        model = ray.train.torch.prepare_model(model, move_to_device=False)
    t0, seen = time.perf_counter(), 0
    while step < total:
        batch = global_batch(step, task.n_examples, cfg)
        stats, norm = _step(task, model, params, opt, sched, batch, rank, world, cfg)
        if not torch.isfinite(norm):  # _step did not apply it: skipped, and counted
            skipped += 1
        step += 1
        seen += len(batch)
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
        if config.get("hold_at_step") == step:  # the node-loss test removes a node here
            time.sleep(120)


def _step(task: Any, model: Any, params: list[Any], opt: Any, sched: Any, batch: np.ndarray,
          rank: int, world: int, cfg: TrainConfig) -> tuple[Any, Any]:
    """One optimizer step on this worker's share of ``batch``. Returns the loss and the extra
    statistics summed over the batch (over all workers) and the gradient norm; a step whose
    gradient is not finite is not applied."""
    import torch

    mine = batch[rank::world]
    opt.zero_grad(set_to_none=True)
    loss_sum, extra = task.loss(model, mine)  # the sum over this worker's examples
    (loss_sum * world / len(batch)).backward()
    norm = torch.nn.utils.clip_grad_norm_(params, cfg.train.max_grad_norm)
    if torch.isfinite(norm):  # a NaN/inf gradient would poison the adapter: not applied
        opt.step()
    sched.step()
    stats = torch.tensor([float(loss_sum.detach()), *extra], dtype=torch.float64)
    if world > 1:
        torch.distributed.all_reduce(stats)
    return stats, norm


def _restore(config: dict[str, Any], task: Any, opt: Any,
             sched: Any) -> tuple[int, list[dict[str, Any]]]:
    """Load the checkpoint to continue from, if any, into ``task``, ``opt`` and ``sched``;
    returns its step and loss history (0 and [] for a new run)."""
    import ray.train
    import torch

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
    return step, history


def _live_history(config: dict[str, Any], rank: int,
                  history: list[dict[str, Any]]) -> Path | None:
    """The run directory's live history, on rank 0: rewritten from the restored state here,
    then appended a row per step (the driver's progress bar follows it; the driver's
    ``_finish`` rewrites it from the last checkpoint). None where there is none to write."""
    live = Path(config["metrics"]) if rank == 0 and config.get("metrics") else None
    if live is not None:
        try:  # rank 0 on another node writes its own copy (as it does its checkpoints)
            live.parent.mkdir(parents=True, exist_ok=True)
            live.write_text("".join(json.dumps(r) + "\n" for r in history), encoding="utf-8")
        except OSError:
            live = None
    return live


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
