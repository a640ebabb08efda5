"""The run directory: :class:`RunStore` creates or opens one, writes a round atomically, tracks
the run's status, reads the complete rounds back and discards what a crash left behind."""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import re
from collections.abc import Mapping, Sequence
from contextlib import suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from mfray.data.schema import LabelSpace
from mfray.errors import StoreError
from mfray.store.files import (
    TMP_MARK,
    commit,
    os_errors,
    parquet_writer,
    read_parquet,
    to_json,
    write_atomic,
    write_tmp,
)
from mfray.store.schema import REFERENCES_SCHEMA, RUNS_SCHEMA, decisions_schema, rounds_schema
from mfray.store.validate import as_table, check_labels, sort_unique

STATUSES: tuple[str, ...] = ("running", "complete", "failed")
#: status -> statuses it may move to (a failed or complete run is resumed through "running").
_TRANSITIONS: dict[str, frozenset[str]] = {
    "running": frozenset(STATUSES),
    "failed": frozenset({"running", "failed"}),
    "complete": frozenset({"running"}),
}
_PART = "part-0.parquet"
_ROUND_DIR = re.compile(r"^round=(\d+)$")
_TABLES = ("decisions", "rounds")


def software_versions() -> dict[str, str]:
    """Installed versions of mfray, Python and the libraries a run depends on. Read from package
    metadata, so nothing heavy (torch) is imported just to learn its version."""
    out = {"python": platform.python_version()}
    for dist in ("mfray", "pyarrow", "ray", "torch", "transformers"):
        with suppress(importlib.metadata.PackageNotFoundError):  # absent: simply not recorded
            out[dist] = importlib.metadata.version(dist)
    return out


class RunStore:
    """One run directory: its runs row, config, and per-round decisions and rounds files."""

    def __init__(self, run_dir: Path, info: Mapping[str, Any]) -> None:
        """Use :meth:`create` or :meth:`open`."""
        self.run_dir = run_dir
        self.run_id: str = info["run_id"]
        self.label_space: dict[str, tuple[str, ...]] = {
            d: tuple(o) for d, o in json.loads(info["label_space_json"]).items()}
        self.decisions_schema = decisions_schema(self.label_space)
        self.rounds_schema = rounds_schema(self.label_space)
        self._checked = False  # rounds checked complete (check_rounds)

    @classmethod
    def create(cls, run_dir: str | os.PathLike[str], *, run_id: str, config: Mapping[str, Any],
               label_space: LabelSpace, model_id: str | None, n_simulations: int) -> RunStore:
        """Start a new run in ``run_dir`` (created if needed; an existing one must be empty).
        Checks up front that the directory is writable. Status starts as ``running``."""
        root = Path(run_dir)
        decisions_schema(label_space)  # rejects an empty label space before anything is written
        if (root / "runs.parquet").exists():
            raise StoreError(f"{root} already holds a run; pass --resume to continue it or "
                             "choose another output directory")
        if root.is_dir() and any(root.iterdir()):
            raise StoreError(f"{root} exists and is not empty; choose another output directory")
        with os_errors("create the run directory", root):
            root.mkdir(parents=True, exist_ok=True)
        _check_writable(root)
        space = {d: list(o) for d, o in label_space.items()}
        pretty = to_json(dict(config), indent=2) + "\n"
        write_atomic(root / "config.json", lambda fh: fh.write(pretty.encode()))
        info = {
            "run_id": run_id, "status": "running", "created_at": datetime.now(UTC),
            "finished_at": None, "config_json": to_json(dict(config)),
            "versions_json": json.dumps(software_versions()), "model_id": model_id,
            "label_space_json": json.dumps(space), "n_simulations": n_simulations, "message": "",
        }
        write_atomic(root / "runs.parquet",
                      parquet_writer(pa.Table.from_pylist([info], schema=RUNS_SCHEMA)))
        return cls(root, info)

    def check_writable(self) -> None:
        """A StoreError now, not after minutes of simulating, when the run cannot be written
        (a read-only disk or directory)."""
        _check_writable(self.run_dir)

    @classmethod
    def open(cls, run_dir: str | os.PathLike[str]) -> RunStore:
        """Open an existing run for reading or resuming."""
        root = Path(run_dir)
        if not (root / "runs.parquet").is_file():
            raise StoreError(f"{root} is not an mfray run directory (no runs.parquet)")
        return cls(root, _read_runs(root))

    # ---- paths and round bookkeeping

    def _file(self, table: str, round_: int) -> Path:
        return self.run_dir / table / f"round={round_:06d}" / _PART

    def completed_rounds(self) -> list[int]:
        """Rounds whose rounds file exists (the mark of a complete round), ascending."""
        rounds_dir = self.run_dir / "rounds"
        if not rounds_dir.is_dir():
            return []
        found = [int(m.group(1)) for d in rounds_dir.iterdir()
                 if (m := _ROUND_DIR.match(d.name)) and (d / _PART).is_file()]
        return sorted(found)

    def first_damaged_round(self) -> int | None:
        """The first round that is missing below the last complete one (deleted after it was
        written) or that has a file that is not readable Parquet (truncated or overwritten),
        or None."""
        done = self.completed_rounds()
        missing = next(iter(self.missing_rounds()), None)
        for r in done[:missing]:
            for table in _TABLES:
                try:
                    pq.read_metadata(self._file(table, r))
                except (OSError, pa.ArrowException):
                    return r
        return missing

    def missing_rounds(self) -> list[int]:
        """Rounds below the last complete one with no complete files (deleted after they were
        written)."""
        done = self.completed_rounds()
        return sorted(set(range(done[-1] + 1)) - set(done)) if done else []

    def check_rounds(self) -> None:
        """Refuse to read a run with a missing round: its tables would be wrong without a
        word. (An unreadable file is an error naming it when it is read.) Checked once per
        store, before the first read."""
        if self._checked:
            return
        if missing := self.missing_rounds():
            r = missing[0]
            raise StoreError(f"{self.run_dir}: round {r} is missing "
                             f"({len(missing)} round(s) in all), and the rounds after it were "
                             f"simulated from it; `mfray simulate --resume {self.run_dir}` "
                             f"simulates round {r} and those after it again")
        self._checked = True

    def discard_incomplete(self) -> list[Path]:
        """Remove what an interrupted write left: decision files of rounds that have no rounds
        file, and temporary files; and a damaged round (:meth:`first_damaged_round`) with every
        round after it, since later rounds were simulated from its state. Returns the removed
        files. Call before resuming: what is removed is simulated again."""
        damaged = self.first_damaged_round()
        complete = {r for r in self.completed_rounds() if damaged is None or r < damaged}
        removed: list[Path] = [p for p in self.run_dir.iterdir() if TMP_MARK in p.name]
        for table in reversed(_TABLES):  # rounds files (the completion marks) go first
            base = self.run_dir / table
            for d in sorted(base.iterdir()) if base.is_dir() else []:
                m = _ROUND_DIR.match(d.name)
                if not m or not d.is_dir():
                    continue
                incomplete = int(m.group(1)) not in complete
                removed += [p for p in d.iterdir() if incomplete or TMP_MARK in p.name]
        for path in removed:
            with os_errors("remove", path):
                path.unlink()
                if path.parent != self.run_dir and not any(path.parent.iterdir()):
                    path.parent.rmdir()
        return removed

    # ---- writing

    def write_round(self, round: int, decisions: pa.Table | Sequence[Mapping[str, Any]],
                    rounds: pa.Table | Sequence[Mapping[str, Any]], step: int | None = None
                    ) -> None:
        """Write one global round: the decisions and rounds rows of all simulations.

        ``step`` numbers the files where a run simulates in waves (one after another, their
        steps numbered on): the rows hold their round within the wave. Without it, the round.

        Rows are validated against the declared schemas (a StoreError names the column at
        fault) and sorted by (sim_id, agent_index). Both files go to temporary names, are
        fsynced, and are renamed decisions first, rounds last, so a crash at any point leaves
        the round either complete or absent. Rewriting a complete round is an error.
        """
        at = round if step is None else step
        if min(round, at) < 0:
            raise StoreError(f"round and step must be >= 0, got {round} and {at}")
        if self._file("rounds", at).exists():
            raise StoreError(f"round {at} of run {self.run_id} is already written "
                             f"({self._file('rounds', at)}); rows are never duplicated")
        what = f"round {round}"
        dec = as_table(decisions, self.decisions_schema, f"{what} decisions")
        rnd = as_table(rounds, self.rounds_schema, f"{what} rounds")
        check_labels(dec, self.label_space, f"{what} decisions")
        check_labels(rnd, self.label_space, f"{what} rounds")
        dec = sort_unique(dec, ["sim_id", "agent_index"], round, self.run_id,
                           f"{what} decisions")
        rnd = sort_unique(rnd, ["sim_id"], round, self.run_id, f"{what} rounds")

        dec_final, rnd_final = self._file("decisions", at), self._file("rounds", at)
        temps: list[Path] = []
        try:
            temps.append(write_tmp(dec_final, parquet_writer(dec)))
            temps.append(write_tmp(rnd_final, parquet_writer(rnd)))
            commit(temps[0], dec_final)
            commit(temps[1], rnd_final)  # the round exists from this rename on
        except BaseException:
            for tmp in temps:
                with suppress(OSError):  # a read-only disk must not hide the first error
                    tmp.unlink(missing_ok=True)
            if not rnd_final.exists():
                with suppress(OSError):  # best effort: discard_incomplete removes it otherwise
                    dec_final.unlink(missing_ok=True)
            raise

    def mark(self, status: str, message: str = "") -> None:
        """Set the run's status (``running`` / ``complete`` / ``failed``) and message; the runs
        file is rewritten atomically. ``finished_at`` is set on complete / failed."""
        info = _read_runs(self.run_dir)
        if status not in _TRANSITIONS.get(info["status"], frozenset()):
            raise StoreError(f"run {self.run_id}: cannot go from status '{info['status']}' to "
                             f"'{status}' (statuses: {', '.join(STATUSES)})")
        info.update(status=status, message=message,
                    finished_at=None if status == "running" else datetime.now(UTC))
        write_atomic(self.run_dir / "runs.parquet",
                      parquet_writer(pa.Table.from_pylist([info], schema=RUNS_SCHEMA)))

    # ---- reading

    def run_info(self) -> dict[str, Any]:
        """The runs row as a dict (``*_json`` columns are JSON text)."""
        return _read_runs(self.run_dir)

    def config(self) -> dict[str, Any]:
        """The resolved config the run was created with."""
        return _read_json(self.run_dir / "config.json")

    def write_data_identity(self, identity: Mapping[str, Any]) -> None:
        """What the run reads: ``data.json``, the dataset's absolute path and fingerprint
        (:mod:`mfray.data.identity`), written when the run starts."""
        text = to_json(dict(identity), indent=1) + "\n"
        write_atomic(self.run_dir / "data.json", lambda fh: fh.write(text.encode()))

    def data_identity(self) -> dict[str, Any] | None:
        """``data.json``; None for a run older than it."""
        path = self.run_dir / "data.json"
        return _read_json(path) if path.exists() else None

    def record_placement(self, attempt: int, rows: Sequence[Mapping[str, Any]]) -> None:
        """Add where the run's actors run (:mod:`mfray.engine.placement`) to
        ``placement.jsonl``: one line per actor, each time they are built (``attempt`` 0, then
        once per rebuild after a lost actor or node; a resume starts again at 0)."""
        path = self.run_dir / "placement.jsonl"
        at = datetime.now(UTC).isoformat(timespec="seconds")
        text = "".join(to_json({"at": at, "attempt": attempt} | dict(r)) + "\n" for r in rows)
        with os_errors("read", path):
            before = path.read_text(encoding="utf-8") if path.exists() else ""
        write_atomic(path, lambda fh: fh.write((before + text).encode()))

    def placement(self) -> list[dict[str, Any]]:
        """Every line of ``placement.jsonl`` (none for a run older than it)."""
        path = self.run_dir / "placement.jsonl"
        with os_errors("read", path):
            lines = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
        return [json.loads(line) for line in lines]

    def write_references(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """The references' fits (:data:`REFERENCES_SCHEMA`), written atomically at the run's
        start (again on resume: the same fits)."""
        table = pa.Table.from_pylist(list(rows), schema=REFERENCES_SCHEMA)
        write_atomic(self.run_dir / "references.parquet", parquet_writer(table))

    def add_references(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """Add fits to those stored (a run in waves fits each wave's units in turn; a fit
        stored already, as on resume, is kept once)."""
        def key(row: Mapping[str, Any]) -> str:  # as text: a NaN equals itself
            return json.dumps(row, sort_keys=True, default=str)

        old = self.read_references().to_pylist()
        seen = {key(r) for r in old}
        rows = pa.Table.from_pylist(list(rows), schema=REFERENCES_SCHEMA).to_pylist()
        if new := [r for r in rows if key(r) not in seen]:
            self.write_references(old + new)

    def read_references(self) -> pa.Table:
        """The references' fits; an empty table for a run without model-free references."""
        path = self.run_dir / "references.parquet"
        if not path.exists():
            return REFERENCES_SCHEMA.empty_table()
        table = read_parquet(path)
        try:
            for i, field in enumerate(REFERENCES_SCHEMA):  # runs older than a nullable column
                if field.nullable and field.name not in table.column_names \
                        and i <= table.num_columns:
                    table = table.add_column(i, field, pa.nulls(table.num_rows, field.type))
            if table.column_names != REFERENCES_SCHEMA.names:
                raise ValueError("other columns")
            return table.cast(REFERENCES_SCHEMA)
        except (ValueError, pa.ArrowException):
            raise StoreError(f"{path} does not have the declared schema:\n{table.schema}"
                             ) from None

    def files(self, table: str = "decisions", steps: Sequence[int] | None = None
              ) -> list[Path]:
        """The files of ``table`` ("decisions" or "rounds") for the complete rounds (those of
        ``steps`` only, where given), in order."""
        if table not in _TABLES:
            raise StoreError(f"unknown table {table!r}; expected one of {list(_TABLES)}")
        wanted = None if steps is None else set(steps)
        return [self._file(table, r) for r in self.completed_rounds()
                if wanted is None or r in wanted]

    def _read(self, table: str, columns: Sequence[str] | None, filter: Any,
              steps: Sequence[int] | None = None) -> pa.Table:
        self.check_rounds()
        schema = self.decisions_schema if table == "decisions" else self.rounds_schema
        if columns is not None:
            unknown = [c for c in columns if c not in schema.names]
            if unknown:
                raise StoreError(f"unknown {table} columns {unknown}")
            schema = pa.schema([schema.field(c) for c in columns], metadata=schema.metadata)
        parts = [read_parquet(p, schema, columns=None if columns is None else list(columns),
                               filters=filter) for p in self.files(table, steps)]
        # files are sorted by (sim_id, agent_index) and read in round order: no sort needed
        return pa.concat_tables(parts) if parts else schema.empty_table()

    def read_decisions(self, columns: Sequence[str] | None = None, filter: Any = None,
                       steps: Sequence[int] | None = None) -> pa.Table:
        """Decisions of all complete rounds (of ``steps`` only, where given), sorted by (step,
        sim_id, agent_index): the step is the round but in a run of several waves
        (``resources.wave_agents``). ``filter`` is a ``pyarrow.compute`` expression (or DNF
        list) as ``pyarrow.parquet.read_table`` takes."""
        return self._read("decisions", columns, filter, steps)

    def read_rounds(self, columns: Sequence[str] | None = None, filter: Any = None,
                    steps: Sequence[int] | None = None) -> pa.Table:
        """Rounds rows of all complete rounds (of ``steps`` only), sorted by (step, sim_id)."""
        return self._read("rounds", columns, filter, steps)

    def to_ray_dataset(self, table: str = "decisions") -> Any:
        """A Ray Data dataset over the complete rounds' files of ``table``. Needs ``ray.init()``
        first. Row order follows Ray Data's execution (set ``preserve_order`` to keep it)."""
        import ray  # lazily: reading with pyarrow must not need Ray

        if not ray.is_initialized():
            raise StoreError("to_ray_dataset needs a running Ray instance: call ray.init() "
                             "first (or read with read_decisions / read_rounds)")
        files = self.files(table)
        if not files:
            schema = self.decisions_schema if table == "decisions" else self.rounds_schema
            return ray.data.from_arrow(schema.empty_table())
        return ray.data.read_parquet([str(p) for p in files], partitioning=None)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise StoreError(f"cannot read {path}: {exc}") from exc


def _check_writable(root: Path) -> None:
    probe = root / f".write-probe{TMP_MARK}{os.getpid()}"
    with os_errors("write into the run directory", root):
        probe.write_bytes(b"probe")
        probe.unlink()


def _read_runs(root: Path) -> dict[str, Any]:
    rows = read_parquet(root / "runs.parquet", RUNS_SCHEMA).to_pylist()
    if len(rows) != 1:
        raise StoreError(f"{root / 'runs.parquet'} holds {len(rows)} rows, expected 1")
    return rows[0]


def read_decisions(run_dir: str | os.PathLike[str], columns: Sequence[str] | None = None,
                   filter: Any = None) -> pa.Table:
    """Decisions of a run's complete rounds (see :meth:`RunStore.read_decisions`)."""
    return RunStore.open(run_dir).read_decisions(columns, filter)


def read_rounds(run_dir: str | os.PathLike[str], columns: Sequence[str] | None = None,
                filter: Any = None) -> pa.Table:
    """Rounds rows of a run's complete rounds (see :meth:`RunStore.read_rounds`)."""
    return RunStore.open(run_dir).read_rounds(columns, filter)
