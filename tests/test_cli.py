"""The command line as a user meets it: exit codes, messages, outputs, and the real data."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mfray.cli import main
from mfray.store import RunStore
from tests.conftest import FIXTURES, require_real_data

RUMOUREVAL_FIXTURE = FIXTURES / "rumoureval" / "traindev2017"
JSONL_FIXTURE = FIXTURES / "jsonl" / "small.jsonl"


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mfray.cli", *args], check=False, capture_output=True,
                          text=True, timeout=120)


def test_convert_and_info(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "ds"
    assert main(["data", "convert", str(RUMOUREVAL_FIXTURE), "--format", "rumoureval",
                 "--out", str(out)]) == 0
    assert (out / "posts.parquet").exists() and (out / "dataset.json").exists()
    capsys.readouterr()
    assert main(["data", "info", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["name"] == "rumoureval" and info["events"] >= 1
    assert main(["data", "info", str(out)]) == 0
    text = capsys.readouterr().out
    assert text.startswith("dataset rumoureval:") and "labels stance:" in text


def test_convert_says_what_it_left_out(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """The real 2019 release keeps Reddit "more" stubs as reply files: skipped, counted."""
    assert main(["data", "convert", str(FIXTURES / "rumoureval" / "reddit2019"), "--format",
                 "rumoureval", "--out", str(tmp_path / "ds")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("converted 1 events, 7 posts")
    assert lines[1:] == [("  skipped 1 Reddit 'more' stub(s), placeholders for comments the "
                         "release does not hold; 1 stance label(s) name one"),
                         "  1 stance label(s) name no post and are left out",
                         ("  kept 2 post(s) whose text was deleted or removed ([deleted], "
                          "[removed]) with their labels"),
                         "  kept 2 post(s) without an author (deleted accounts)"]


def test_data_mix_adds_resampled_copies(small_world_dir: Path, tmp_path: Path,
                                         capsys: pytest.CaptureFixture) -> None:
    from mfray.data.schema import read_dataset

    out = tmp_path / "mixed"
    assert main(["data", "mix", str(small_world_dir), "--out", str(out), "--events",
                 "synth-00,synth-01", "--copies", "2", "--min-agents", "20"]) == 0
    text = capsys.readouterr().out
    ds, mixed = read_dataset(small_world_dir), read_dataset(out)
    copies = [e for e in mixed.event_ids() if "~mix" in e]
    assert set(mixed.event_ids()) == set(ds.event_ids()) | set(copies) and copies
    assert all(e.split("~mix")[0] in ("synth-00", "synth-01") for e in copies)
    assert text.startswith(f"{len(copies)} resampled copies of 2 event(s)")
    for e in copies:  # one line per copy: its reply count and shares
        assert re.search(rf"^{re.escape(e)} +\d+ +\d+%", text, re.MULTILINE)
    bad = run_cli("data", "mix", str(small_world_dir), "--out", str(tmp_path / "m2"),
                  "--events", "nope")
    assert bad.returncode == 2 and "unknown event" in bad.stderr
    none = run_cli("data", "mix", str(small_world_dir), "--out", str(tmp_path / "m3"),
                   "--min-agents", "100000")
    assert none.returncode == 2 and "no copy has 100000 replies" in none.stderr
    assert not (tmp_path / "m2").exists() and not (tmp_path / "m3").exists()
    assert main(["data", "mix", str(small_world_dir), "--out", str(tmp_path / "m4"),
                 "--events", "synth-00", "--copies", "2", "--min-agents", "100000",
                 "--top-up"]) == 0  # topped up rather than redrawn: both copies are there
    assert re.search(r"^synth-00~mix1 +100\d\d\d ", capsys.readouterr().out, re.MULTILINE)


def test_jsonl_convert(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["data", "convert", str(JSONL_FIXTURE), "--format", "jsonl",
                 "--out", str(tmp_path / "ds")]) == 0
    main(["data", "info", str(tmp_path / "ds"), "--json"])
    info = json.loads(capsys.readouterr().out.split("\n", 1)[1])
    assert set(info["labels"]) == {"stance", "belief"}


BAD_CASES = {
    "broken JSON": ("{\"type\": \"event\", \"event_id\": \"e\", ", "line 2"),
    "missing field": (('{"type": "post", "event_id": "e", "thread_id": "t", "time": '
                      '"2016-01-01T00:00:00Z", "text": "x"}'), "post_id"),
    "wrong type": (('{"type": "post", "event_id": "e", "thread_id": "t", "post_id": "p", '
                   '"time": "2016-01-01T00:00:00Z", "text": 5}'), "text"),
    "unknown label": (('{"type": "post", "event_id": "e", "thread_id": "t", "post_id": "p", '
                      '"time": "2016-01-01T00:00:00Z", "text": "x", '
                      '"labels": {"stance": "maybe"}}'), "labels.stance"),
}
HEADER = '{"type": "dataset", "name": "bad", "label_space": {"stance": ["support", "deny"]}}'
EVENT = '{"type": "event", "event_id": "e", "topic": "t"}'


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_input_is_one_clear_error_and_no_output(case: str, tmp_path: Path) -> None:
    line, field = BAD_CASES[case]
    src = tmp_path / "bad.jsonl"
    body = [HEADER, line] if case == "broken JSON" else [HEADER, EVENT, line]
    src.write_text("\n".join(body) + "\n")
    out = tmp_path / "out"
    proc = run_cli("data", "convert", str(src), "--format", "jsonl", "--out", str(out))
    assert proc.returncode == 2
    err = proc.stderr.strip()
    assert err.startswith("mfray: error: ") and "Traceback" not in proc.stderr
    assert str(src) in err and field in err, err
    assert len(err.splitlines()) == 1
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_time_backwards_and_empty_event(tmp_path: Path) -> None:
    src = tmp_path / "bad.jsonl"
    post = ('{{"type": "post", "event_id": "e", "thread_id": "t", "post_id": "{p}", '
            '"parent_id": {parent}, "time": "{t}", "text": "x"}}')
    src.write_text("\n".join([HEADER, EVENT,
                              post.format(p="a", parent="null", t="2016-01-01T10:00:00Z"),
                              post.format(p="b", parent='"a"', t="2016-01-01T09:00:00Z")]))
    proc = run_cli("data", "convert", str(src), "--format", "jsonl", "--out",
                   str(tmp_path / "o"))
    assert proc.returncode == 2 and "earlier than its parent" in proc.stderr
    assert "'time'" in proc.stderr and str(src) in proc.stderr
    src.write_text(f"{HEADER}\n{EVENT}" + "\n")
    proc = run_cli("data", "convert", str(src), "--format", "jsonl", "--out",
                   str(tmp_path / "o"))
    assert proc.returncode == 2 and "no posts" in proc.stderr
    assert not (tmp_path / "o").exists()


def test_missing_source_and_llm_variant_errors(tmp_path: Path) -> None:
    proc = run_cli("data", "convert", str(tmp_path / "nothing"), "--format", "rumoureval",
                   "--out", str(tmp_path / "o"))
    assert proc.returncode == 2 and "no such file" in proc.stderr
    proc = run_cli("data", "info", str(tmp_path))
    assert proc.returncode == 2 and "not an mfray dataset" in proc.stderr


def test_simulate_evaluate_round_trip(small_world_dir: Path, tmp_path: Path,
                                      capsys: pytest.CaptureFixture) -> None:
    run = tmp_path / "run"
    assert main(["simulate", "--data", str(small_world_dir), "--out", str(run),
                 "--variants", "persistence,base-rate", "--set", "sim.warmup=32",
                 "--set", "eval.level=0.9"]) == 0
    assert main(["evaluate", str(run)]) == 0
    out = capsys.readouterr().out
    # the run's eval section: its level, and its source unless --from names one
    # a compact summary: the run's level, its source, one line per variant, the files named
    assert "[90% interval over events]" in out and "simulated distribution from probs" in out
    lines = out.splitlines()
    assert any(line.split()[:1] == ["persistence"] for line in lines)
    assert any(line.split()[:1] == ["base-rate"] for line in lines)
    assert "summary.md" in out and "kl_by_event.png" in out
    assert "| base-rate | stance | the base rate (4) | — | 3 |" in out  # 4 events, 3 to fit each
    weights = [r["persistence_weight"] for r in RunStore.open(run).read_references().to_pylist()
               if r["variant"] == "persistence"]
    assert len(weights) == 4 and all(f"warm-up weight {w:.2f}" in out for w in weights)
    assert (run / "eval" / "shares.png").exists()
    assert main(["evaluate", str(run), "--from", "labels", "--out", str(tmp_path / "ev")]) == 0
    out = capsys.readouterr().out
    assert "[90% interval over events]" in out and "simulated distribution from labels" in out
    assert main(["simulate", "--data", str(small_world_dir), "--out", str(tmp_path / "r2"),
                 "--variants", "mf", "--model", str(tmp_path / "no-model")]) == 2
    assert "no model at" in capsys.readouterr().err
    assert not (tmp_path / "r2").exists()
    assert main(["simulate", "--data", str(small_world_dir), "--out", str(tmp_path / "r3"),
                 "--set", "sim.bogus=1"]) == 2
    assert "unknown key sim.bogus" in capsys.readouterr().err


@pytest.mark.real_data
def test_real_rumoureval_dev_counts(tmp_path: Path) -> None:
    """The acceptance numbers of the foundation issue, through the command line."""
    src = require_real_data()
    out = tmp_path / "X"
    t0 = time.perf_counter()
    proc = run_cli("data", "convert", str(src), "--format", "rumoureval", "--out", str(out))
    elapsed = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stderr
    assert elapsed < 20, f"conversion took {elapsed:.1f} s"
    proc = run_cli("data", "info", str(out))
    text = proc.stdout
    assert "8 events, 317 threads, 5026 posts" in text
    for label, n in {"support": 960, "deny": 358, "query": 430, "comment": 3278}.items():
        assert re.search(rf"\b{label} {n}\b", text), label
    replies = {"charliehebdo": 1086, "ebola-essien": 32, "ferguson": 1136,
               "germanwings-crash": 354, "ottawashooting": 837, "prince-toronto": 91,
               "putinmissing": 53, "sydneysiege": 1120}
    for event, n in replies.items():
        assert re.search(rf"^{event}\s.*\s{n}$", text, re.MULTILINE), event
    assert re.search(r"^germanwings-crash\s+dev\s", text, re.MULTILINE)


def test_console_script_is_installed() -> None:
    exe = shutil.which("mfray") or str(Path(sys.executable).with_name("mfray"))
    proc = subprocess.run([exe, "--help"], check=False, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "simulate" in proc.stdout


def test_dotted_overrides_and_unknown_arguments(small_world_dir: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture) -> None:
    run = tmp_path / "run"
    assert main(["simulate", "--data", str(small_world_dir), "--out", str(run),
                 "--variants", "base-rate", "--sim.warmup=40", "--sim.round_size=8"]) == 0
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["sim"]["warmup"] == 40 and cfg["sim"]["round_size"] == 8
    with pytest.raises(SystemExit) as exc:
        main(["simulate", "--bogus"])
    assert exc.value.code == 2 and "unrecognized arguments: --bogus" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["data", "info", "x", "--sim.warmup=3"])


def test_compare_command(small_world_dir: Path, tmp_path: Path,
                         capsys: pytest.CaptureFixture) -> None:
    run = tmp_path / "run"
    assert main(["simulate", "--data", str(small_world_dir), "--out", str(run), "--model",
                 "scripted", "--variants", "state,mf,base-rate", "--sim.warmup=32"]) == 0
    assert main(["compare", str(run)]) == 0
    out = capsys.readouterr().out
    assert "ΔKL % vs state" in out and "comparison.md" in out
    assert any(line.split()[:1] == ["mf"] for line in out.splitlines())
    assert {p.name for p in (run / "compare").iterdir()} >= {
        "comparison.md", "comparison.csv", "comparison.png", "forecast.md", "forecast.png"}


def test_labels_check_command(small_world_dir: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["labels", "check", str(small_world_dir), "--labeller", "human"]) == 0
    assert "accuracy = 1.000" in capsys.readouterr().out
    assert main(["labels", "check", str(small_world_dir), "--labeller", "openai"]) == 2
    assert "needs --url" in capsys.readouterr().err


def test_train_then_simulate_with_the_adapter(small_world_dir: Path, tiny_model_dir: Path,
                                              tmp_path: Path, capsys: pytest.CaptureFixture
                                              ) -> None:
    pytest.importorskip("peft")
    out = tmp_path / "tune"
    args = ["train", "policy", "--data", str(small_world_dir), "--model", str(tiny_model_dir),
            "--out", str(out), "--variant", "sft", "--held-out", "synth-03", "--workers", "0",
            "--train.max_steps=2", "--set", "train.max_examples=8", "--set",
            "train.batch_size=4", "--set", "train.max_prompt_tokens=128"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "steps 2, loss " in printed and "(mean of the first and last 1 steps)" in printed and str(out / "adapter") in printed
    import pyarrow.parquet as pq

    examples = pq.read_table(out / "examples" / "policy.parquet")
    assert examples.num_rows == 8 and "synth-03" not in set(examples["event_id"].to_pylist())
    assert main(["simulate", "--data", str(small_world_dir), "--out", str(tmp_path / "run"),
                 "--variants", "state", "--model", str(tiny_model_dir), "--policy-adapter",
                 str(out / "adapter"), "--set", "sim.events=[synth-03]", "--max-rounds",
                 "4"]) == 0
    assert main(["train", "policy", "--data", str(small_world_dir), "--out", str(out),
                 "--variant", "nope"]) == 2
    assert "train.variant" in capsys.readouterr().err


def test_adapter_tuned_on_another_meanfield_form_is_refused(
        small_world_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "adapter").mkdir()
    saved = tmp_path / "train_config.json"
    base = ["simulate", "--data", str(small_world_dir), "--out", str(tmp_path / "run"),
            "--variants", "mf", "--model", "scripted", "--policy-adapter",
            str(tmp_path / "adapter")]
    saved.write_text(json.dumps({"train": {"variant": "mf"}, "sim": {"meanfield_form": "tally"}}))
    assert main(base) == 2
    err = capsys.readouterr().err
    assert "was tuned on the mean field written as 'tally'" in err
    assert "--set sim.meanfield_form=tally" in err and not (tmp_path / "run").exists()
    assert main(["probe", "--data", str(small_world_dir), "--model", "scripted",
                 "--policy-adapter", str(tmp_path / "adapter")]) == 2
    # the same form with another number of reactions
    saved.write_text(json.dumps({"train": {"variant": "mf"},
                                 "sim": {"meanfield_form": "tally", "tally_size": 48}}))
    assert main([*base, "--set", "sim.meanfield_form=tally"]) == 2
    err = capsys.readouterr().err
    assert "written as 48 reactions; this run writes 20" in err
    assert "--set sim.tally_size=48" in err and not (tmp_path / "run").exists()
    # an sft adapter never saw a mean field: any form goes
    saved.write_text(json.dumps({"train": {"variant": "sft"}, "sim": {"meanfield_form": "tally"}}))
    from mfray.cli.simulate import check_adapter_form
    from mfray.config import PolicyConfig, RunConfig

    check_adapter_form(RunConfig(policy=PolicyConfig(adapter=str(tmp_path / "adapter"))))


def test_train_classifier_then_simulate_with_it(small_world_dir: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture) -> None:
    """`mfray train classifier` fits on the policy examples (held-out event left out, the
    validation split scored) and `--set policy.model=OUT` simulates with it; a run whose mean
    field is written in another form than the classifier read is refused, as for adapters."""
    import numpy as np
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    out = tmp_path / "clf"
    assert main(["train", "classifier", "--data", str(small_world_dir), "--out", str(out),
                 "--variant", "mf", "--held-out", "synth-03", "--set",
                 "train.val_examples=40", "--set", "sim.meanfield_form=tally"]) == 0
    printed = capsys.readouterr().out
    assert "fitted ['support', 'deny', 'query', 'comment'] on " in printed
    assert f"simulate with --set policy.model={out}" in printed
    report = json.loads((out / "validation.json").read_text())
    assert report["examples"] == 40 and "synth-03" not in report["events"]
    assert np.isfinite(report["loss"]["classifier"]) and report["loss"]["classifier"] > 0
    loss = report["loss"]
    verdict = "beats" if loss["classifier"] < loss["label_frequencies"] else "does not beat"
    assert (f"validation (40 unseen examples of the training events): loss "
            f"{loss['classifier']:.4f} classifier, {loss['label_frequencies']:.4f} the training "
            f"label frequencies (a constant): the classifier {verdict} the constant") in printed
    examples = pq.read_table(out / "examples" / "policy.parquet")
    assert "synth-03" not in set(examples["event_id"].to_pylist())
    run = tmp_path / "run"
    base = ["simulate", "--data", str(small_world_dir), "--out", str(run), "--variants", "mf",
            "--set", f"policy.model={out}", "--set", "sim.events=[synth-03]", "--set",
            "sim.warmup=16", "--max-rounds", "3"]
    assert main(base) == 2
    assert "was tuned on the mean field written as 'tally'" in capsys.readouterr().err
    assert main([*base, "--set", "sim.meanfield_form=tally"]) == 0
    decisions = RunStore.open(run).read_decisions(["is_warmup", "ok"])
    rollout = decisions.filter(pc.invert(decisions["is_warmup"]))
    assert rollout.num_rows > 0 and all(rollout["ok"].to_pylist())
    assert main(["train", "classifier", "--data", str(small_world_dir), "--out",
                 str(tmp_path / "text"), "--variant", "mf-text"]) == 2
    assert "a prompt classifier reads the prompts" in capsys.readouterr().err
    assert main(["train", "classifier", "--data", str(small_world_dir), "--out", str(out),
                 "--variant", "mf", "--held-out", "synth-02"]) == 2
    assert "holds a training run with another config" in capsys.readouterr().err
    assert main(["train", "classifier", "--data", str(small_world_dir), "--out",
                 str(tmp_path / "text-mode"), "--set", "policy.mode=text"]) == 2
    assert "use policy.mode=choice" in capsys.readouterr().err


def test_train_meanfield_end_to_end(small_world_dir: Path, tiny_model_dir: Path,
                                    tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """The text mean field's model, tuned by the information bottleneck (REINFORCE, K = 2)."""
    pytest.importorskip("peft")
    out = tmp_path / "mf"
    assert main(["train", "meanfield", "--data", str(small_world_dir), "--model",
                 str(tiny_model_dir), "--out", str(out), "--variant", "mf-text", "--workers",
                 "0", "--set", "sim.events=[synth-00]", "--train.max_steps=2",
                 "--train.batch_size=2", "--train.k=2", "--meanfield.max_new_tokens=6",
                 "--train.max_prompt_tokens=256"]) == 0
    assert "steps 2" in capsys.readouterr().out
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    assert all(r["relevance"] < 0 and "compression" in r for r in rows)
    assert (out / "adapter" / "adapter_config.json").is_file()
    from mfray.store import RunStore

    run = tmp_path / "run"
    assert main(["simulate", "--data", str(small_world_dir), "--out", str(run), "--variants",
                 "mf-text", "--model", str(tiny_model_dir), "--meanfield-adapter",
                 str(out / "adapter"), "--set", "sim.events=[synth-00]", "--set",
                 "sim.warmup=32", "--meanfield.max_new_tokens=6", "--max-rounds", "3"]) == 0
    texts = RunStore.open(run).read_rounds()["meanfield_text"].to_pylist()
    assert len(texts) == 3 and all(texts)


def test_convert_warns_when_no_post_has_a_label(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture) -> None:
    """Label files that match no post used to give a dataset of dashes without a word."""
    src = tmp_path / "src"
    shutil.copytree(FIXTURES / "rumoureval" / "reddit2019", src)
    key = src / "final-eval-key.json"
    key.write_text(json.dumps({"subtaskaenglish": {"nobody": "deny"}, "subtaskbenglish": {}}))
    assert main(["data", "convert", str(src), "--format", "rumoureval",
                 "--out", str(tmp_path / "ds")]) == 0
    captured = capsys.readouterr()
    assert "1 stance label(s) name no post and are left out" in captured.out
    assert captured.err.startswith("mfray: warning: none of the 7 posts has a label (stance): "
                                   "the label files name none of them")
    # a labelled release converts without the warning
    assert main(["data", "convert", str(FIXTURES / "rumoureval" / "reddit2019"), "--format",
                 "rumoureval", "--out", str(tmp_path / "ok")]) == 0
    assert "warning" not in capsys.readouterr().err


def test_convert_says_when_a_post_id_is_in_two_events(tmp_path: Path,
                                                      capsys: pytest.CaptureFixture) -> None:
    """Accepted (every table keys a post by its event; resampled copies share their event's
    ids by design), and now said, where it was silent."""
    src = tmp_path / "two.jsonl"
    text = (FIXTURES / "jsonl" / "small.jsonl").read_text()
    src.write_text(text.replace('"post_id": "q3"', '"post_id": "p3"'))
    assert main(["data", "convert", str(src), "--format", "jsonl",
                 "--out", str(tmp_path / "ds")]) == 0
    assert ("  1 post id(s) appear in more than one event (first: p3 in dam, fog); each event "
            "keeps its own copy") in capsys.readouterr().out.splitlines()
    assert main(["data", "convert", str(FIXTURES / "jsonl" / "small.jsonl"), "--format",
                 "jsonl", "--out", str(tmp_path / "one")]) == 0
    assert "more than one event" not in capsys.readouterr().out
