"""Tests of the canonical data model's storage and summaries."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from mfray.data.schema import dataset_info, read_dataset, write_dataset
from mfray.errors import DataError
from tests.test_data_build import SPACE, build, post, small

# --------------------------------------------------------------------------------------------
# storage


def test_write_read_round_trip(tmp_path: Path) -> None:
    ds = small()
    out = write_dataset(ds, tmp_path / "out")
    assert sorted(p.name for p in out.iterdir()) == ["dataset.json", "events.parquet",
                                                     "posts.parquet"]
    back = read_dataset(out)
    assert back.name == "toy" and back.label_space == SPACE
    assert back.notes == {"origin": "unit test"}
    assert back.posts.equals(ds.posts) and back.events.equals(ds.events)
    manifest = json.loads((out / "dataset.json").read_text())
    assert (manifest["events"], manifest["posts"]) == (2, 7)


def test_write_replaces_a_dataset_and_leaves_no_temporaries(tmp_path: Path) -> None:
    write_dataset(small(), tmp_path / "out")
    one = build([post("s1")])
    write_dataset(one, tmp_path / "out")
    assert read_dataset(tmp_path / "out").posts.num_rows == 1
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_write_into_an_empty_existing_dir(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    write_dataset(small(), tmp_path / "out")
    assert read_dataset(tmp_path / "out").posts.num_rows == 7


def test_write_refuses_a_foreign_directory(tmp_path: Path) -> None:
    target = tmp_path / "out"
    target.mkdir()
    (target / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="not an mfray dataset") as exc:
        write_dataset(small(), target)
    assert exc.value.file == str(target)
    assert [p.name for p in target.iterdir()] == ["notes.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def failing_second_write(monkeypatch: pytest.MonkeyPatch) -> None:
    real = pq.ParquetWriter.write_table
    calls = []

    def write_table(self: Any, table: Any, *args: Any, **kwargs: Any) -> None:
        calls.append(table)
        if len(calls) == 2:  # the posts, after the events
            raise OSError("disk full")
        real(self, table, *args, **kwargs)

    monkeypatch.setattr(pq.ParquetWriter, "write_table", write_table)


def test_failed_write_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    failing_second_write(monkeypatch)
    with pytest.raises(OSError, match="disk full"):
        write_dataset(small(), tmp_path / "out")
    assert list(tmp_path.iterdir()) == []  # no target, no temporary directory


def test_failed_rewrite_keeps_the_old_dataset(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    write_dataset(small(), tmp_path / "out")
    failing_second_write(monkeypatch)
    with pytest.raises(OSError, match="disk full"):
        write_dataset(build([post("s1")]), tmp_path / "out")
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    assert read_dataset(tmp_path / "out").posts.num_rows == 7


def test_read_requires_a_dataset(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not an mfray dataset"):
        read_dataset(tmp_path)


def test_dataset_info() -> None:
    info = dataset_info(small())
    assert (info["name"], info["events"], info["threads"], info["posts"], info["replies"]) == (
        "toy", 2, 3, 7, 4)
    assert info["labels"]["stance"] == {"support": 1, "deny": 1, "query": 1, "comment": 2,
                                        "unlabelled": 2}
    assert info["labels"]["emotion"] == {"pos": 0, "neg": 1, "unlabelled": 6}
    assert info["per_event"] == [
        {"event_id": "e1", "split": "dev", "threads": 2, "posts": 5, "replies": 3},
        {"event_id": "e2", "split": "test", "threads": 1, "posts": 2, "replies": 1},
    ]
