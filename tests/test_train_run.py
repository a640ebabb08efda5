"""IB-Tune on Ray Train with a tiny model: the runner's outputs, 1 vs 2 workers, resume after a
failure, adapters in the simulator, and the mean-field model's information-bottleneck gradient."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from mfray.config import MeanFieldConfig, PolicyConfig, ResourcesConfig, RunConfig, SimConfig
from mfray.data.schema import read_dataset
from mfray.errors import MfrayError
from mfray.train.config import TrainConfig, TrainParams, TrainResources
from mfray.train.run import LiveProgress, loss_summary, train
from mfray.train.worker import global_batch, lr_factor, total_steps

pytest.importorskip("peft")


def _cfg(data: Path, model: Path, num_workers: int = 0, **train_kw) -> TrainConfig:
    params = {"variant": "mf", "max_examples": 24, "batch_size": 4, "max_steps": 6,
              "checkpoint_every": 2, "log_every": 1, "lr": 1e-3,
              "max_prompt_tokens": 256, "warmup_ratio": 0.0} | train_kw
    return TrainConfig(sim=SimConfig(data=str(data), round_size=16, warmup=32),
                       policy=PolicyConfig(model=str(model)),
                       meanfield=MeanFieldConfig(max_new_tokens=8),
                       train=TrainParams(**params),
                       resources=TrainResources(num_cpus=2, num_workers=num_workers))


def _losses(out: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_loss_summary_averages_the_first_and_last_steps() -> None:
    """One batch's loss is noise; the summary compares means of the first and last steps."""
    rows = [{"loss": x} for x in (2.0, 1.0, 3.0, 0.5, 0.4, 9.0, 0.2, 0.4)]
    assert loss_summary(rows, n=3) == ("loss 2.0000 -> 3.2000 (mean of the first and last 3 "
                                       "steps)")
    assert loss_summary(rows[:3], n=8) == "loss 2.0000 -> 3.0000 (mean of the first and last 1 steps)"
    nan = [{"loss": float("nan")}, {"loss": 1.0}, {"loss": 0.5}, {"loss": 0.25}]
    assert loss_summary(nan, n=2) == "loss 1.0000 -> 0.3750 (mean of the first and last 2 steps)"
    assert loss_summary([{"loss": 0.7}]) == "loss 0.7000 (one step)"
    assert loss_summary([]) == "no steps"


def test_live_progress_reads_complete_rows_only(tmp_path: Path) -> None:
    """The bar follows the last complete row; a row being written is left for the next read."""
    path = tmp_path / "metrics.jsonl"
    rows = [{"step": 1, "loss": 2.0, "examples_per_s": 1.5},
            {"step": 2, "loss": 1.0, "examples_per_s": 2.5, "skipped_steps": 1}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 3, "lo')
    progress = LiveProgress(path, total=10, desc="train policy", poll_s=60)
    progress.update()
    assert progress.bar.n == 2
    assert progress.bar.postfix == "loss=1.5000, examples_per_s=2.50, skipped=1"
    progress.bar.close()


def test_schedule_is_seeded_and_covers_every_example() -> None:
    cfg = TrainConfig(train=TrainParams(batch_size=4, epochs=2, seed=3, warmup_ratio=0.25,
                                        schedule="linear"))
    assert total_steps(10, cfg) == 6
    epoch0 = np.concatenate([global_batch(s, 10, cfg) for s in range(3)])
    assert sorted(epoch0.tolist()) == list(range(10))  # one epoch: each example once
    assert global_batch(4, 10, cfg).tolist() == global_batch(4, 10, cfg).tolist()
    assert not np.array_equal(epoch0, np.concatenate([global_batch(s, 10, cfg)
                                                      for s in range(3, 6)]))
    assert [round(lr_factor(s, 8, cfg), 3) for s in range(8)] == \
        [0.5, 1.0, 1.0, 0.833, 0.667, 0.5, 0.333, 0.167]


def test_policy_training_outputs_and_adapter_in_simulation(
        small_world_dir: Path, tiny_model_dir: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    import ray.train

    from mfray.engine import simulate
    from mfray.llm import load_model

    reports = []  # Ray Train takes one report per 2 s: only checkpoints are reported
    real_report = ray.train.report
    monkeypatch.setattr(ray.train, "report", lambda metrics, **kw: (
        reports.append((metrics["step"], kw.get("checkpoint") is not None)),
        real_report(metrics, **kw)))
    out = tmp_path / "t"
    adapter = train(_cfg(small_world_dir, tiny_model_dir), "policy", out)
    assert reports == [(2, True), (4, True), (6, True)]  # log_every=1, checkpoint_every=2
    assert (adapter / "adapter_config.json").is_file()
    assert len(_losses(out)) == 6 and (out / "loss.png").stat().st_size > 1000
    assert (out / "examples" / "policy.parquet").is_file()
    base = load_model(tiny_model_dir)
    tuned = load_model(tiny_model_dir, adapter=adapter)
    prompts = ["The crowd says", "Another prompt"]
    assert not np.allclose(base.score(prompts, ["support", "deny"]),
                           tuned.score(prompts, ["support", "deny"]))
    run = RunConfig(sim=SimConfig(data=str(small_world_dir), variants=("mf",), seeds=(0,),
                                  events=("synth-00",), warmup=32),
                    policy=PolicyConfig(model=str(tiny_model_dir), adapter=str(adapter)),
                    resources=ResourcesConfig(num_cpus=2))
    store = simulate(run, read_dataset(small_world_dir), tmp_path / "run", progress=False,
                     max_rounds=3)
    assert store.run_info()["model_id"] == "tiny-llama+t"
    assert all(r["ok"] for r in store.read_decisions().to_pylist())


@pytest.fixture(scope="module")
def one_worker_run(small_world_dir: Path, tiny_model_dir: Path,
                   tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted 1-worker run of :func:`_cfg`, given relative paths (as `mfray train
    --data d --model m` passes them): the reference of the 2-worker, resume and relative-path
    tests, trained once because each Ray Train worker takes about 20 s to start here."""
    out = tmp_path_factory.mktemp("one-worker") / "run"
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tiny_model_dir.parent)
        train(_cfg(Path(os.path.relpath(small_world_dir)), Path(tiny_model_dir.name),
                   num_workers=1), "policy", out)
    return out


def test_one_and_two_workers_reach_the_same_loss(small_world_dir: Path, tiny_model_dir: Path,
                                                 one_worker_run: Path, tmp_path: Path) -> None:
    train(_cfg(small_world_dir, tiny_model_dir, num_workers=2), "policy", tmp_path / "two")
    a, b = _losses(one_worker_run), _losses(tmp_path / "two")
    assert a[0] > 0 and len(a) == len(b) == 6
    np.testing.assert_allclose(a, b, rtol=1e-4)
    assert a[-1] != a[0]  # it trained


def test_killed_run_resumes_from_its_checkpoint(small_world_dir: Path, tiny_model_dir: Path,
                                                one_worker_run: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture) -> None:
    """A Ray Train worker dies after step 5 (checkpoint at 4); the rerun resumes at step 5
    and ends where an uninterrupted run ends. The run directory's metrics.jsonl grows step by
    step, so a failed run shows how far it got, and the driver's progress bar follows it."""
    cfg = _cfg(small_world_dir, tiny_model_dir, num_workers=1)
    with pytest.raises(MfrayError, match="resume"):
        train(cfg, "policy", tmp_path / "killed", fail_at_step=5)  # checkpoint at step 4
    live = [json.loads(x)["step"] for x in (tmp_path / "killed" / "metrics.jsonl").read_text()
            .splitlines()]
    assert live == [1, 2, 3, 4, 5]
    capsys.readouterr()
    train(cfg, "policy", tmp_path / "killed")
    bar = capsys.readouterr().err.replace("\r", "\n").splitlines()
    assert any(line.startswith("train policy: 100%") and "6/6" in line for line in bar)
    assert any("4/6" in line for line in bar)  # the resumed run starts at its checkpoint
    history = [json.loads(x) for x in (tmp_path / "killed" / "metrics.jsonl").read_text()
               .splitlines()]
    assert [r["step"] for r in history] == [1, 2, 3, 4, 5, 6]
    np.testing.assert_allclose(_losses(tmp_path / "killed"), _losses(one_worker_run),
                               rtol=1e-5)
    with pytest.raises(MfrayError, match="another config"):
        train(replace(cfg, train=replace(cfg.train, lr=0.5)), "policy", tmp_path / "killed")


def test_meanfield_reward_has_gradient_for_lora(small_world_dir: Path, tiny_hf,
                                                tiny_model_dir: Path) -> None:
    from mfray.engine.inference import InferenceServer
    from mfray.llm import ScriptedModel, load_model
    from mfray.train.data import build_examples
    from mfray.train.tasks import MeanFieldTask

    cfg = _cfg(small_world_dir, tiny_model_dir, variant="mf-text", k=3, beta=0.1)
    ds = read_dataset(small_world_dir)
    server = InferenceServer(cfg.policy, ds.label_space, model=ScriptedModel())
    run = RunConfig(sim=cfg.sim, policy=cfg.policy, meanfield=cfg.meanfield)
    _, mf = build_examples(run, ds, "mf-text", events=["synth-00"],
                           summarize=lambda req: server.summarize(req, 8))
    assert mf.num_rows > 2
    for estimator in ("reinforce", "best-of-k"):
        c = replace(cfg, train=replace(cfg.train, estimator=estimator))
        task = MeanFieldTask(c, mf.slice(0, 2), "cpu", hf=load_model(tiny_model_dir),
                             policy=tiny_hf)
        task.space = {d: tuple(o) for d, o in ds.label_space.items()}
        loss, stats = task.loss(task.model, [0, 1])
        loss.backward()
        grads = [p.grad for n, p in task.model.named_parameters() if "lora_B" in n]
        assert grads and all(g is not None for g in grads)
        assert sum(float(g.abs().sum()) for g in grads) > 0, estimator
        assert np.isfinite(stats).all() and stats[1] < 0  # a mean log-likelihood


def test_bf16_base_keeps_float32_adapters(small_world_dir: Path, tiny_model_dir: Path) -> None:
    import torch

    from mfray.train.tasks import PolicyTask

    cfg = _cfg(small_world_dir, tiny_model_dir, bf16="on")
    ds = read_dataset(small_world_dir)
    from mfray.train.data import build_examples

    pol, _ = build_examples(RunConfig(sim=cfg.sim, policy=cfg.policy), ds, "mf",
                            events=["synth-00"])
    task = PolicyTask(cfg, pol.slice(0, 4), "cpu")
    dtypes = {n: p.dtype for n, p in task.model.named_parameters()}
    assert {d for n, d in dtypes.items() if "lora_" in n} == {torch.float32}
    assert torch.bfloat16 in {d for n, d in dtypes.items() if "lora_" not in n}
    loss, _ = task.loss(task.model, [0, 1, 2, 3])
    loss.backward()
    assert all(p.grad is not None for n, p in task.model.named_parameters() if "lora_B" in n)


def test_forced_bf16_on_an_emulating_cpu_is_said_before_training_starts(
        small_world_dir: Path, tiny_model_dir: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """The driver says it (the workers' logs do not reach the console), before anything slow."""
    from mfray.llm import load
    from mfray.train import run

    class Stop(Exception):
        pass

    def stop(*_args: object) -> None:
        raise Stop

    monkeypatch.setattr(load, "cpu_bf16_native", lambda: False)
    monkeypatch.setattr(run, "_start", stop)
    for bf16, said in (("on", True), ("auto", False)):
        with pytest.raises(Stop):
            train(_cfg(small_world_dir, tiny_model_dir, bf16=bf16), "policy", tmp_path / "r")
        assert ("--set train.bf16=auto" in capsys.readouterr().err) is said


def test_relative_paths_reach_the_workers(small_world_dir: Path, tiny_model_dir: Path,
                                          one_worker_run: Path) -> None:
    """Ray Train's workers do not run in the driver's directory: a run given relative paths
    (:func:`one_worker_run`) still finds its data and model, and saves them absolute."""
    assert len(_losses(one_worker_run)) == 6
    assert (one_worker_run / "adapter" / "adapter_config.json").is_file()
    saved = json.loads((one_worker_run / "train_config.json").read_text())
    assert saved["sim"]["data"] == str(small_world_dir.resolve())
    assert saved["policy"]["model"] == str(tiny_model_dir.resolve())


def test_a_non_finite_gradient_is_skipped_and_counted(small_world_dir: Path, tiny_model_dir: Path,
                                                      tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A step whose gradient is NaN (as SDPA's backward gave on an H100 with left padding) is
    not applied: the adapter stays finite, the step is counted in the metrics and the run goes
    on. A run where every step is NaN fails instead of returning an untrained adapter."""
    import torch
    from safetensors.torch import load_file

    from mfray.train.tasks import PolicyTask

    calls = {"n": 0}
    real_loss = PolicyTask.loss

    def loss(self, model, idx):
        calls["n"] += 1
        total, extra = real_loss(self, model, idx)
        return (total * float("nan") if calls["n"] in poisoned else total), extra

    monkeypatch.setattr(PolicyTask, "loss", loss)
    poisoned = {3}
    adapter = train(_cfg(small_world_dir, tiny_model_dir), "policy", tmp_path / "nan")
    history = [json.loads(x) for x in (tmp_path / "nan" / "metrics.jsonl").read_text()
               .splitlines()]
    assert [r["skipped_steps"] for r in history] == [0, 0, 1, 1, 1, 1]
    assert np.isnan(history[2]["loss"]) and all(np.isfinite(r["loss"]) for r in history[3:])
    weights = load_file(adapter / "adapter_model.safetensors")
    assert weights and all(bool(torch.isfinite(w).all()) for w in weights.values())
    assert any(bool(w.abs().sum() > 0) for k, w in weights.items() if "lora_B" in k)  # trained
    calls["n"], poisoned = 0, set(range(1, 7))
    with pytest.raises(MfrayError, match="every one of the 6 steps"):
        train(_cfg(small_world_dir, tiny_model_dir), "policy", tmp_path / "all-nan")


def test_validation_scores_unseen_examples_against_the_base_model_and_a_constant(
        small_world_dir: Path, tiny_model_dir: Path, tmp_path: Path) -> None:
    """``train.val_examples`` keeps examples out of training and scores them after it; each
    figure of validation.json is recomputed here another way: the simulator's scoring of the
    base and the merged tuned model, and the label frequencies counted by hand."""
    import pyarrow.parquet as pq

    from mfray.llm import load_model, model_input
    from mfray.train.run import validation_summary

    out = tmp_path / "t"
    # prompts uncut, as the simulator scores them
    train(_cfg(small_world_dir, tiny_model_dir, val_examples=8, max_prompt_tokens=4096),
          "policy", out)
    rep = json.loads((out / "validation.json").read_text())
    tr = pq.read_table(out / "examples" / "policy.parquet").to_pylist()
    val = pq.read_table(out / "examples" / "policy-val.parquet").to_pylist()
    key = lambda r: (r["event_id"], r["agent_index"], r["dimension"])
    assert len(tr) == 24 and len(val) == rep["examples"] == 8
    assert not {key(r) for r in tr} & {key(r) for r in val}

    def nll(model) -> float:
        total = 0.0
        for r in val:
            z = model.score([model_input(model, r["prompt"])], r["options"])[0]
            total -= z[r["label_index"]] - np.logaddexp.reduce(z)
        return total / len(val)

    assert rep["loss"]["base"] == pytest.approx(nll(load_model(tiny_model_dir)), abs=1e-4)
    assert rep["loss"]["tuned"] == pytest.approx(
        nll(load_model(tiny_model_dir, adapter=out / "adapter")), abs=1e-3)
    assert rep["loss"]["tuned"] != pytest.approx(rep["loss"]["base"], abs=1e-3)
    counts = {}
    for r in tr:
        counts.setdefault(tuple(r["options"]), np.ones(len(r["options"])))[r["label_index"]] += 1
    const = -np.mean([np.log(counts[tuple(r["options"])][r["label_index"]]
                             / counts[tuple(r["options"])].sum()) for r in val])
    assert rep["loss"]["label_frequencies"] == pytest.approx(const, abs=1e-9)
    assert "8 unseen examples" in validation_summary(rep)
    # without val_examples the sample is the one it always was
    plain = tmp_path / "plain"
    train(_cfg(small_world_dir, tiny_model_dir, max_steps=1), "policy", plain)
    assert not (plain / "validation.json").exists()
