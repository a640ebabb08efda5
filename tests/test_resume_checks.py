"""What a resume and a reader check (issue 41): the data is the run's own, the flags do not
change the run, and no round is missing without a word."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import pyarrow as pa
import pytest

from mfray.cli import main
from mfray.data.identity import differences, fingerprint
from mfray.data.schema import read_dataset, write_dataset
from mfray.store import RunStore

RUN = ["--variants", "base-rate,state", "--model", "scripted", "--set", "sim.warmup=32"]


def _data(small_world_dir: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(small_world_dir, tmp_path / "data"))


def _stable(run: Path) -> list[dict]:
    table = RunStore.open(run).read_decisions()
    return table.drop_columns(["run_id", "latency_s"]).to_pylist()


def test_a_fingerprint_names_the_columns_that_differ(small_world_dir: Path) -> None:
    ds = read_dataset(small_world_dir)
    same = replace(ds, posts=pa.concat_tables([ds.posts.slice(0, 10), ds.posts.slice(10)]))
    assert differences(fingerprint(ds), fingerprint(same)) == []  # chunking is not content
    topics = pa.array(["another topic"] * ds.events.num_rows)
    other = replace(ds, events=ds.events.set_column(
        ds.events.schema.get_field_index("topic"), "topic", topics))
    assert differences(fingerprint(ds), fingerprint(other)) == ["events: the values of topic"]
    fewer = replace(ds, posts=ds.posts.slice(1))
    said = differences(fingerprint(ds), fingerprint(fewer))
    assert said[0] == f"posts: {ds.posts.num_rows} rows then, {ds.posts.num_rows - 1} now"


def test_a_resume_refuses_other_data_and_says_what_differs(
        small_world_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data, run = _data(small_world_dir, tmp_path), tmp_path / "run"
    assert main(["simulate", "--data", str(data), "--out", str(run), *RUN,
                 "--max-rounds", "2"]) == 0
    original = read_dataset(data)
    events = original.events
    k = events.schema.get_field_index("topic")
    write_dataset(replace(original, events=events.set_column(
        k, "topic", pa.array(["re-converted"] * events.num_rows))), data)
    capsys.readouterr()
    assert main(["simulate", "--resume", str(run)]) == 2
    err = capsys.readouterr().err
    assert "this is not the data the run began with" in err
    assert "events: the values of topic" in err and str(data.absolute()) in err
    assert RunStore.open(run).completed_rounds() == [0, 1]  # nothing was simulated on it
    write_dataset(original, data)
    assert main(["simulate", "--resume", str(run)]) == 0
    assert RunStore.open(run).run_info()["status"] == "complete"


def test_a_resume_reads_its_data_from_anywhere_and_refuses_moved_data(
        small_world_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture) -> None:
    _data(small_world_dir, tmp_path)
    monkeypatch.chdir(tmp_path)
    assert main(["simulate", "--data", "data", "--out", "run", *RUN, "--max-rounds", "1"]) == 0
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "data").mkdir()  # a directory of the same name, not a dataset
    monkeypatch.chdir(elsewhere)
    shutil.move(tmp_path / "data", tmp_path / "moved")
    capsys.readouterr()
    assert main(["simulate", "--resume", str(tmp_path / "run")]) == 2
    assert f"ran on {tmp_path / 'data'}, which is not there any more" in capsys.readouterr().err
    shutil.move(tmp_path / "moved", tmp_path / "data")
    assert main(["simulate", "--resume", str(tmp_path / "run")]) == 0  # typed relative: found
    assert RunStore.open(tmp_path / "run").run_info()["status"] == "complete"


def test_a_resume_refuses_flags_that_would_change_the_run(
        small_world_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data, run = _data(small_world_dir, tmp_path), tmp_path / "run"
    assert main(["simulate", "--data", str(data), "--out", str(run), *RUN,
                 "--max-rounds", "1"]) == 0
    capsys.readouterr()
    assert main(["simulate", "--resume", str(run), "--set", "sim.seeds=[5,6]", "--variants",
                 "state", "--model", "nonexistent", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    for said in ("--set sim.seeds=[5,6]", "--variants state", "--model nonexistent",
                 f"--out {tmp_path / 'x'}", "only resources.* may change on a resume"):
        assert said in err
    assert RunStore.open(run).completed_rounds() == [0]
    # where it runs does not change results: shards and batches may change on a resume
    assert main(["simulate", "--resume", str(run), "--shards", "2", "--set",
                 "resources.chunk=32"]) == 0
    clean = tmp_path / "clean"
    assert main(["simulate", "--data", str(data), "--out", str(clean), *RUN]) == 0
    assert _stable(run) == _stable(clean)


def test_a_missing_round_is_named_by_readers_and_simulated_again(
        small_world_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data, run = _data(small_world_dir, tmp_path), tmp_path / "run"
    assert main(["simulate", "--data", str(data), "--out", str(run), *RUN]) == 0
    before, rounds = _stable(run), RunStore.open(run).completed_rounds()
    assert len(rounds) > 4
    for table in ("decisions", "rounds"):
        shutil.rmtree(run / table / "round=000003")
    capsys.readouterr()
    for command in (["evaluate", str(run)], ["compare", str(run)]):
        assert main(command) == 2
        err = capsys.readouterr().err
        assert "round 3 is missing" in err and f"mfray simulate --resume {run}" in err
    assert main(["simulate", "--resume", str(run)]) == 0
    err = capsys.readouterr().err
    assert f"round 3 of {run} is missing or has an unreadable file; it and the " \
           f"{len(rounds) - 4} rounds after it are simulated again" in err
    assert RunStore.open(run).completed_rounds() == rounds
    assert _stable(run) == before
