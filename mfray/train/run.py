"""IB-Tune on Ray Train: one ``TorchTrainer`` (Train V2) per training run.

The driver prepares the examples (:mod:`mfray.train.prepare`), then starts
``resources.num_workers`` workers (one per GPU on a cluster, CPU processes here; 0 runs in-process)
that run :func:`mfray.train.worker.train_loop`. A run started again with the same output
directory resumes from the latest checkpoint. The adapter lands in ``OUT/adapter`` (peft
format), the history in ``OUT/metrics.jsonl`` and the loss curve in ``OUT/loss.png``.
"""

from __future__ import annotations

import json
import shutil
import threading
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, Self

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from mfray.config_migrate import stored_config
from mfray.data.schema import Dataset, read_dataset
from mfray.engine.ray_env import ensure_ray
from mfray.errors import ConfigError, MfrayError
from mfray.llm.load import check_bf16
from mfray.train.config import TrainConfig
from mfray.train.data import read_examples
from mfray.train.prepare import VAL_FILE, prepare_examples
from mfray.train.worker import STATE_FILE, latest_checkpoint, total_steps, train_loop
from mfray.variants import variant


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
          num_threads: int | None = None, hold_at_step: int | None = None) -> Path:
    """Build the examples (unless ``OUT/examples`` has them: a resumed run reuses them), run
    the ``TorchTrainer``, and write the adapter, the history and the loss curve to ``out``.
    ``fail_at_step`` and ``hold_at_step`` make the workers fail, or wait two minutes, after
    that step (the fault tests)."""
    import ray.train
    from ray.train.torch import TorchTrainer

    if kind not in ("policy", "meanfield"):
        raise ConfigError(f"unknown training kind {kind!r}: policy or meanfield")
    # said here, in the driver: the workers' logs do not reach its console
    check_bf16(cfg.train.bf16, "cuda" if cfg.resources.use_gpu else "cpu", "train.bf16")
    cfg, out = _start(cfg, out)
    examples = out / "examples" / f"{kind}.parquet"
    if not examples.is_file():
        data = ds if ds is not None else read_dataset(cfg.sim.data)
        examples = prepare_examples(cfg, data, out, kind, summarize)
    ensure_ray(cfg.resources)
    resume = latest_checkpoint(out)
    trainer = TorchTrainer(
        train_loop,
        train_loop_config={"cfg": cfg.to_dict(), "kind": kind, "examples": str(examples),
                           "fail_at_step": fail_at_step, "hold_at_step": hold_at_step,
                           "num_threads": num_threads,
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
        first = str(exc).strip().splitlines()[-1].strip() if str(exc).strip() else \
            type(exc).__name__
        raise MfrayError(f"training failed: {first}. Run the same command again to resume "
                         f"from the last checkpoint in {out / 'ray'}") from exc
    adapter = _finish(result.checkpoint, out)
    if kind == "policy" and (out / "examples" / VAL_FILE).is_file():
        validate(cfg, out)
    return adapter


def train_classifier(cfg: TrainConfig, out: str | Path, *, ds: Dataset | None = None) -> Path:
    """Fit a prompt classifier (:mod:`mfray.llm.classifier`) on the policy examples that ``mfray
    train policy`` would tune on (same events, draws and validation split), one model per
    option set; write ``OUT/classifier.json`` and, with ``train.val_examples``,
    ``OUT/validation.json`` (its loss against the training label frequencies)."""
    from mfray.llm.classifier import CLASSIFIER_FILE, ClassifierModel, fit_option_model

    if variant(cfg.train.prompt_variant).keeps_text:
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
