"""Tests of the trajectory store: schemas, atomic per-round writes, resume, readers, runs table."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from mfray import store
from mfray.errors import StoreError
from mfray.store import RunStore, decisions_schema, rounds_schema
from mfray.store import run as store_run

SPACE = {"stance": ("support", "deny", "query", "comment"), "emotion": ("pos", "neg")}
RUN_ID = "run-1"
CONFIG = {"sim": {"rounds": 3, "events": ["e1", "e2"]}, "policy": {"mode": "choice"},
          "out": Path("/tmp/x")}


def decision(sim: int, agent: int, round_: int, **over: Any) -> dict[str, Any]:
    row = {
        "run_id": RUN_ID, "sim_id": sim, "event_id": f"e{sim}", "variant": "mf", "seed": 7,
        "round": round_, "agent_index": agent, "post_id": f"p{sim}-{agent}", "user_id": "u1",
        "thread_id": "t1", "context_post_id": "p0", "persona": "a reader", "is_warmup": agent < 1,
        "meanfield_id": f"mf-{sim}-{round_}", "template_hash": "abc", "action_text": "I doubt it",
        "action": {"stance": "deny", "emotion": "neg"},
        "probs": {"stance": [0.1, 0.6, 0.2, 0.1], "emotion": [0.3, 0.7]},
        "real_text": "no way", "real": {"stance": "deny", "emotion": None}, "nll": 0.51,
        "ok": True, "error": None, "latency_s": 0.02, "tokens_in": 300, "tokens_out": 1,
    }
    row.update(over)
    return row


def round_row(sim: int, round_: int, **over: Any) -> dict[str, Any]:
    row = {
        "run_id": RUN_ID, "sim_id": sim, "event_id": f"e{sim}", "variant": "mf", "seed": 7,
        "round": round_, "meanfield_id": f"mf-{sim}-{round_}", "meanfield_text": "mostly doubt",
        "meanfield_shares": {"stance": [0.1, 0.6, 0.2, 0.1], "emotion": [0.5, 0.5]},
        "counts": {"stance": [0, 2, 0, 0], "emotion": [0, 2]}, "n_agents": 2, "n_warmup": 1,
        "n_failed": 0, "t_policy_s": 0.1, "t_meanfield_s": 0.05, "t_total_s": 0.2,
    }
    row.update(over)
    return row


def rows_for(round_: int, sims: int = 2, agents: int = 2) -> tuple[list[dict], list[dict]]:
    # deliberately out of order: the writer sorts
    dec = [decision(s, a, round_) for s in reversed(range(sims)) for a in reversed(range(agents))]
    return dec, [round_row(s, round_) for s in reversed(range(sims))]


def new_store(tmp_path: Path) -> RunStore:
    return RunStore.create(tmp_path / "run", run_id=RUN_ID, config=CONFIG, label_space=SPACE,
                           model_id="scripted", n_simulations=2)


def test_round_trip_exact_schema_and_order(tmp_path: Path) -> None:
    st = new_store(tmp_path)
    dec0, rnd0 = rows_for(0)
    st.write_round(0, dec0, rnd0)
    dec1, rnd1 = rows_for(1)  # the second round as Arrow tables with numpy's int64 widths
    table1 = pa.Table.from_pylist(dec1, schema=st.decisions_schema)
    table1 = table1.set_column(table1.schema.get_field_index("sim_id"), "sim_id",
                               table1["sim_id"].cast(pa.int64()))
    st.write_round(1, table1, pa.Table.from_pylist(rnd1, schema=st.rounds_schema))

    dec = st.read_decisions()
    assert dec.schema.equals(decisions_schema(SPACE), check_metadata=True)
    assert dec.schema.field("action").type == pa.struct([("stance", pa.string()),
                                                         ("emotion", pa.string())])
    keys = list(zip(dec["round"].to_pylist(), dec["sim_id"].to_pylist(),
                    dec["agent_index"].to_pylist(), strict=True))
    assert keys == sorted(keys) and len(keys) == 8
    assert dec.slice(0, 1).to_pylist()[0] == decision(0, 0, 0)
    rnd = store.read_rounds(st.run_dir)
    assert rnd.schema.equals(rounds_schema(SPACE)) and rnd.num_rows == 4
    assert rnd.to_pylist()[0] == round_row(0, 0)
    assert json.loads(rnd.schema.metadata[b"mfray.label_space"]) == {
        d: list(o) for d, o in SPACE.items()}
    # projection and filter
    sub = store.read_decisions(st.run_dir, columns=["round", "action"],
                               filter=pc.field("sim_id") == 1)
    assert sub.column_names == ["round", "action"] and sub.num_rows == 4
    assert (tmp_path / "run" / "decisions" / "round=000001" / "part-0.parquet").is_file()
    with pytest.raises(StoreError, match="unknown decisions columns"):
        st.read_decisions(columns=["nope"])


def test_empty_run_reads_empty_tables(tmp_path: Path) -> None:
    st = new_store(tmp_path)
    assert st.completed_rounds() == []
    assert st.read_decisions().num_rows == 0
    assert st.read_rounds().schema.equals(rounds_schema(SPACE))


_CRASH = textwrap.dedent("""
    import os, sys
    from pathlib import Path
    sys.path.insert(0, {tests!r})
    import test_store as t
    from mfray.store import run as store_run
    st = store_run.RunStore.open({run!r})
    real = store_run.commit
    def commit(tmp, final):
        if final.parent.parent.name == "rounds":
            os._exit(3)  # a crash: no cleanup, no finally blocks
        real(tmp, final)
    store_run.commit = commit
    st.write_round(1, *t.rows_for(1))
""")


def test_crash_between_renames_then_resume(tmp_path: Path) -> None:
    st = new_store(tmp_path)
    st.write_round(0, *rows_for(0))
    script = _CRASH.format(tests=str(Path(__file__).parent), run=str(st.run_dir))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          check=False)
    assert proc.returncode == 3, proc.stderr
    dec_file = st.run_dir / "decisions" / "round=000001" / "part-0.parquet"
    assert dec_file.is_file()  # decisions renamed, rounds file never was
    tmps = list((st.run_dir / "rounds" / "round=000001").iterdir())
    assert len(tmps) == 1 and tmps[0].name.startswith(".part-0.parquet.tmp-")
    stray = st.run_dir / ".runs.parquet.tmp-1-deadbeef"
    stray.write_bytes(b"half")

    assert st.completed_rounds() == [0]
    assert set(st.read_decisions()["round"].to_pylist()) == {0}
    removed = st.discard_incomplete()
    assert set(removed) == {dec_file, tmps[0], stray}
    assert not (st.run_dir / "rounds" / "round=000001").exists()
    assert st.discard_incomplete() == []
    st.write_round(1, *rows_for(1))
    assert st.completed_rounds() == [0, 1] and st.read_decisions().num_rows == 8


def test_overwrite_of_incomplete_round_is_atomic(tmp_path: Path) -> None:
    st = new_store(tmp_path)
    dec_file = st.run_dir / "decisions" / "round=000000" / "part-0.parquet"
    dec_file.parent.mkdir(parents=True)
    dec_file.write_bytes(b"left over from a crash")
    st.write_round(0, *rows_for(0))
    assert st.read_decisions().num_rows == 4


def test_duplicate_round_rejected(tmp_path: Path) -> None:
    st = new_store(tmp_path)
    for r in range(3):
        st.write_round(r, *rows_for(r))
    with pytest.raises(StoreError, match="round 2 .* already written"):
        st.write_round(2, *rows_for(2))
    assert st.read_decisions().num_rows == 12 and st.completed_rounds() == [0, 1, 2]


def _table_with(column: str, values: pa.Array) -> pa.Table:
    table = pa.Table.from_pylist(rows_for(0)[0], schema=decisions_schema(SPACE))
    return table.set_column(table.schema.get_field_index(column), column, values)


@pytest.mark.parametrize(("decisions", "match"), [
    (_table_with("round", pa.array(["0"] * 4)), "column 'round' has type string"),
    (_table_with("nll", pa.array([1] * 4, pa.int64())), "column 'nll' has type int64"),
    (_table_with("sim_id", pa.array([2**40] * 4, pa.int64())), "column 'sim_id'"),
    (pa.Table.from_pylist(rows_for(0)[0], schema=decisions_schema(SPACE)).drop_columns("nll"),
     r"missing columns \['nll'\]"),
    ([decision(0, 0, 0, sim_id="zero")], "column 'sim_id' does not hold"),
    ([decision(0, 0, 0, seed=1.5)], "column 'seed' does not hold"),
    ([decision(0, 0, 0, ok=None)], "column 'ok' has null values"),
    ([decision(0, 0, 0, extra=1)], r"unknown columns \['extra'\]"),
    ([decision(0, 0, 0, action={"stance": "maybe", "emotion": None})],
     r"column 'action.stance' holds 'maybe'"),
    ([decision(0, 0, 0, action={"mood": "x"})], r"column 'action'.*unknown dimensions"),
    ([decision(0, 0, 0, probs={"stance": [1.0], "emotion": None})],
     "column 'probs.stance'.*4 values"),
    ([decision(0, 0, 1)], "column 'round' holds values other than 0"),
    ([decision(0, 0, 0, run_id="other")], "column 'run_id' holds values other than"),
    ([decision(0, 1, 0), decision(0, 1, 0)], "duplicate rows for {'sim_id': 0, 'agent_index': 1}"),
])
def test_bad_rows_rejected_naming_the_column(tmp_path: Path, decisions: Any, match: str) -> None:
    st = new_store(tmp_path)
    with pytest.raises(StoreError, match=match):
        st.write_round(0, decisions, rows_for(0)[1])
    assert st.completed_rounds() == [] and not (st.run_dir / "decisions").exists()


def test_rounds_rows_validated(tmp_path: Path) -> None:
    st = new_store(tmp_path)
    with pytest.raises(StoreError, match="column 'counts.emotion'"):
        st.write_round(0, rows_for(0)[0], [round_row(0, 0, counts={"stance": [1, 0, 0, 0],
                                                                  "emotion": [1]})])
    st.write_round(0, [], [round_row(0, 0)])  # a round may have no decisions
    assert st.read_decisions().num_rows == 0 and st.read_rounds().num_rows == 1


def test_unwritable_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(StoreError, match="cannot create the run directory .*a-file/run"):
        RunStore.create(blocker / "run", run_id=RUN_ID, config=CONFIG, label_space=SPACE,
                        model_id=None, n_simulations=1)

    def denied(self: Path, data: bytes) -> int:
        raise PermissionError(errno.EACCES, "Permission denied", str(self))

    monkeypatch.setattr(Path, "write_bytes", denied)  # what chmod 0o500 does for non-root
    with pytest.raises(StoreError, match="cannot write into the run directory .*Permission"):
        new_store(tmp_path)


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0,
                    reason="root ignores directory permissions; covered by the monkeypatch test")
def test_unwritable_directory_chmod(tmp_path: Path) -> None:
    (tmp_path / "ro").mkdir(mode=0o500)
    with pytest.raises(StoreError, match="cannot write into the run directory"):
        RunStore.create(tmp_path / "ro", run_id=RUN_ID, config=CONFIG, label_space=SPACE,
                        model_id=None, n_simulations=1)


def test_disk_full_during_round_cleans_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    st = new_store(tmp_path)
    calls = []

    def writer(table: pa.Table) -> Any:
        def write(fh: Any) -> None:
            calls.append(fh.name)
            if len(calls) == 2:  # the rounds file: the decisions temp exists by then
                raise OSError(errno.ENOSPC, "No space left on device")
            fh.write(b"x")
        return write

    monkeypatch.setattr(store_run, "parquet_writer", writer)
    with pytest.raises(StoreError, match=r"cannot write .*rounds/round=000000/\.part-0.*disk full"):
        st.write_round(0, *rows_for(0))
    monkeypatch.undo()
    leftovers = [p for p in st.run_dir.rglob("*") if p.is_file() and "round=" in str(p)]
    assert leftovers == [] and st.completed_rounds() == []
    st.write_round(0, *rows_for(0))
    assert st.completed_rounds() == [0]


def test_a_flipped_byte_is_a_clear_error_naming_the_file(tmp_path: Path) -> None:
    """Pages carry checksums: a byte flipped inside one fails on read, with the file's name,
    not as impossible probabilities at evaluation."""
    st = new_store(tmp_path)
    st.write_round(0, *rows_for(0))
    target = st.run_dir / "decisions" / "round=000000" / "part-0.parquet"
    data = bytearray(target.read_bytes())
    first_page = int(pq.read_metadata(target).row_group(0).column(0).data_page_offset)
    data[first_page + 20] ^= 0xFF
    target.write_bytes(bytes(data))
    with pytest.raises(StoreError, match=r"cannot read .*round=000000/part-0\.parquet"):
        RunStore.open(st.run_dir).read_decisions()


def test_truncated_parquet_is_a_clear_error(tmp_path: Path) -> None:
    st = new_store(tmp_path)
    st.write_round(0, *rows_for(0))
    st.write_round(1, *rows_for(1))
    target = st.run_dir / "decisions" / "round=000001" / "part-0.parquet"
    data = target.read_bytes()
    target.write_bytes(data[: len(data) // 2])
    with pytest.raises(StoreError, match=r"cannot read .*round=000001/part-0\.parquet.*truncated"):
        st.read_decisions()
    assert st.read_rounds().num_rows == 4  # the other table is intact
    (st.run_dir / "runs.parquet").write_bytes(b"PAR1garbage")
    with pytest.raises(StoreError, match="runs.parquet"):
        RunStore.open(st.run_dir)


def test_damaged_round_and_later_ones_are_discarded_for_resume(tmp_path: Path) -> None:
    st = new_store(tmp_path)
    for r in range(4):
        st.write_round(r, *rows_for(r))
    assert st.first_damaged_round() is None and st.discard_incomplete() == []
    target = st.run_dir / "rounds" / "round=000002" / "part-0.parquet"
    target.write_bytes(target.read_bytes()[:40])  # a truncated completion mark
    assert st.first_damaged_round() == 2
    removed = st.discard_incomplete()
    assert {p.parent.name for p in removed} == {"round=000002", "round=000003"}
    assert len(removed) == 4 and st.completed_rounds() == [0, 1]
    assert st.read_decisions().num_rows == 8  # rounds 0 and 1 intact
    st.write_round(2, *rows_for(2))  # and the round can be written again
    assert st.completed_rounds() == [0, 1, 2]


def test_status_transitions(tmp_path: Path) -> None:
    st = new_store(tmp_path)
    info = st.run_info()
    assert info["status"] == "running" and info["finished_at"] is None
    assert info["created_at"].tzinfo is not None and info["n_simulations"] == 2
    st.mark("failed", "failure rate 0.6 over threshold 0.5")
    info = RunStore.open(st.run_dir).run_info()
    assert info["status"] == "failed" and info["finished_at"] >= info["created_at"]
    assert info["message"] == "failure rate 0.6 over threshold 0.5"
    with pytest.raises(StoreError, match="from status 'failed' to 'complete'"):
        st.mark("complete")
    st.mark("running", "resumed")
    assert st.run_info()["finished_at"] is None
    st.mark("complete")
    with pytest.raises(StoreError, match="from status 'complete' to 'failed'"):
        st.mark("failed")
    with pytest.raises(StoreError, match="to 'done'"):
        st.mark("done")
    assert st.run_info()["status"] == "complete"
    assert [p.name for p in st.run_dir.iterdir() if p.name.startswith(".")] == []


def test_config_versions_and_reopen(tmp_path: Path) -> None:
    st = new_store(tmp_path)
    expected = {"sim": {"rounds": 3, "events": ["e1", "e2"]}, "policy": {"mode": "choice"},
                "out": "/tmp/x"}
    assert RunStore.open(st.run_dir).config() == expected
    text = (st.run_dir / "config.json").read_text()
    assert text.startswith('{\n  "sim": {') and text.endswith("}\n")
    info = st.run_info()
    assert json.loads(info["config_json"]) == expected and info["model_id"] == "scripted"
    versions = json.loads(info["versions_json"])
    assert versions["pyarrow"] == pa.__version__ and "python" in versions and "mfray" in versions
    opened = RunStore.open(st.run_dir)
    assert opened.label_space == SPACE and opened.run_id == RUN_ID
    with pytest.raises(StoreError, match="already holds a run; pass --resume"):
        new_store(tmp_path)
    with pytest.raises(StoreError, match="not an mfray run directory"):
        RunStore.open(tmp_path)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("x")
    with pytest.raises(StoreError, match="not empty"):
        RunStore.create(tmp_path / "busy", run_id="r", config={}, label_space=SPACE,
                        model_id=None, n_simulations=1)
    with pytest.raises(StoreError, match="cannot store the config as JSON"):
        RunStore.create(tmp_path / "r2", run_id="r", config={"x": object()}, label_space=SPACE,
                        model_id=None, n_simulations=1)
    with pytest.raises(StoreError, match="at least one action dimension"):
        RunStore.create(tmp_path / "r3", run_id="r", config={}, label_space={},
                        model_id=None, n_simulations=1)


# --------------------------------------------------------------------------------------------
# Ray Data


@pytest.fixture(scope="module")
def ray_session() -> Any:
    ray = pytest.importorskip("ray")
    started = not ray.is_initialized()
    if started:
        try:
            ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
        except (RuntimeError, ConnectionError, OSError) as exc:
            pytest.skip(f"ray.init(num_cpus=1) failed here: {exc}")
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield ray
    if started:
        ray.shutdown()


def test_ray_dataset(tmp_path: Path, ray_session: Any) -> None:
    st = new_store(tmp_path)
    st.write_round(0, *rows_for(0))
    st.write_round(1, *rows_for(1))
    (st.run_dir / "decisions" / "round=000002").mkdir()  # an incomplete round: not read
    (st.run_dir / "decisions" / "round=000002" / "part-0.parquet").write_bytes(b"junk")
    ds = st.to_ray_dataset()
    rows = ds.take_all()
    assert len(rows) == 8 and {r["round"] for r in rows} == {0, 1}
    assert ds.schema().names == decisions_schema(SPACE).names
    assert st.to_ray_dataset("rounds").count() == 4
    assert new_store(tmp_path / "empty").to_ray_dataset().count() == 0
    with pytest.raises(StoreError, match="unknown table"):
        st.to_ray_dataset("posts")


def test_ray_dataset_needs_ray_init(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ray = pytest.importorskip("ray")
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    with pytest.raises(StoreError, match=r"call ray.init\(\)"):
        new_store(tmp_path).to_ray_dataset()


def test_references_of_a_run_before_like_training_still_read(tmp_path: Path) -> None:
    """Runs stored before the shift-robust references have no ``like_training`` column: it
    reads as nulls; a file with other columns is refused by name."""
    import pyarrow.parquet as pq

    from mfray.store.schema import REFERENCES_SCHEMA

    s = new_store(tmp_path)
    row = {"unit_key": "e", "event_id": "e", "variant": "persistence", "dimension": "stance",
           "options": ["a", "b"], "probs": [0.4, 0.6], "persistence_weight": 0.5,
           "crowd_prior": None, "n_train_events": 3, "n_fit_events": None}
    old = pa.schema([f for f in REFERENCES_SCHEMA if f.name != "like_training"])
    pq.write_table(pa.Table.from_pylist([row], schema=old), s.run_dir / "references.parquet")
    got = s.read_references().to_pylist()
    assert got == [row | {"like_training": None}]
    pq.write_table(pa.table({"x": [1]}), s.run_dir / "references.parquet")
    with pytest.raises(StoreError, match="declared schema"):
        s.read_references()


def test_references_added_wave_by_wave_are_kept_once(tmp_path: Path) -> None:
    """A run in waves adds each wave's fits, and a resumed or rebuilt wave adds them again:
    each is stored once (a NaN, a missing nullable key and another key order alike)."""
    s = new_store(tmp_path)
    s.add_references([])
    assert not (s.run_dir / "references.parquet").exists()
    a = {"unit_key": "e", "event_id": "e", "variant": "crowd", "dimension": "stance",
         "options": ["a", "b"], "probs": [0.4, 0.6], "crowd_prior": float("nan"),
         "n_train_events": 3}
    b = a | {"unit_key": "f", "event_id": "f"}
    s.add_references([a])
    s.add_references([dict(reversed(list(b.items()))), a])
    s.add_references([b, a])
    got = s.read_references().to_pylist()
    assert [r["unit_key"] for r in got] == ["e", "f"]
    assert got[0]["like_training"] is None and got[0]["crowd_prior"] != got[0]["crowd_prior"]
