"""The trajectory store: declared Arrow schemas of a run's output tables, an atomic per-round
writer, readers (pyarrow and Ray Data) and what resuming needs.

A run lives in one directory::

    RUN_DIR/runs.parquet                          one row: status, config, versions (atomic rewrite)
    RUN_DIR/config.json                           the resolved config, pretty-printed
    RUN_DIR/decisions/round=000012/part-0.parquet one row per agent decision of round 12
    RUN_DIR/rounds/round=000012/part-0.parquet    one row per simulation of round 12
    RUN_DIR/references.parquet                    the model-free references' fits (if any ran)

Partitions are by round only, one file per round holding *all* simulations of the run, rows sorted
by (sim_id, agent_index). This deviates on purpose from the architecture's ``run=/sim=/round=``
partitions: 1,000 simulations x 100 rounds would otherwise make 10^5 tiny files, which is slow
to write, list and read. Run, simulation and round are plain columns of every row (the ``round``
column is also in the file, so the store's readers don't use Hive partition discovery).

A round is complete iff its rounds file exists: both files are written under temporary names,
fsynced, and renamed decisions first, rounds file last. Readers only ever see complete rounds;
``discard_incomplete`` removes what a crash left behind before a run resumes.
"""

from __future__ import annotations

import errno
import importlib.metadata
import json
import os
import platform
import re
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mfray.data.schema import LABEL_SPACE_KEY, LabelSpace
from mfray.errors import StoreError

STATUSES: tuple[str, ...] = ("running", "complete", "failed")
#: status -> statuses it may move to (a failed or complete run is resumed through "running").
_TRANSITIONS: dict[str, frozenset[str]] = {
    "running": frozenset(STATUSES),
    "failed": frozenset({"running", "failed"}),
    "complete": frozenset({"running"}),
}
_PART = "part-0.parquet"
_ROUND_DIR = re.compile(r"^round=(\d+)$")
_TMP_MARK = ".tmp-"
_TABLES = ("decisions", "rounds")

_STR, _I32, _I64, _F64, _BOOL = pa.string(), pa.int32(), pa.int64(), pa.float64(), pa.bool_()
_TIME = pa.timestamp("ms", tz="UTC")


def _f(name: str, type_: pa.DataType, nullable: bool = True) -> pa.Field:
    return pa.field(name, type_, nullable=nullable)


def _per_dim(label_space: LabelSpace, type_: pa.DataType) -> pa.StructType:
    if not label_space:
        raise StoreError("a run declares at least one action dimension")
    return pa.struct([(dim, type_) for dim in label_space])


def _meta(label_space: LabelSpace) -> dict[bytes, bytes]:
    return {LABEL_SPACE_KEY: json.dumps({d: list(o) for d, o in label_space.items()}).encode()}


def _keys() -> list[pa.Field]:
    return [_f("run_id", _STR, False), _f("sim_id", _I32, False), _f("event_id", _STR, False),
            _f("variant", _STR, False), _f("seed", _I64, False), _f("round", _I32, False)]


def decisions_schema(label_space: LabelSpace) -> pa.Schema:
    """Schema of the decisions table: one row per agent decision. ``action`` / ``real`` hold one
    label per dimension, ``probs`` the action distribution in option order (null where the
    policy gives none)."""
    labels, probs = _per_dim(label_space, _STR), _per_dim(label_space, pa.list_(_F64))
    return pa.schema([
        *_keys(), _f("agent_index", _I32, False), _f("post_id", _STR, False),
        _f("user_id", _STR), _f("thread_id", _STR), _f("context_post_id", _STR),
        _f("persona", _STR), _f("is_warmup", _BOOL, False), _f("meanfield_id", _STR),
        _f("template_hash", _STR), _f("action_text", _STR), _f("action", labels),
        _f("probs", probs), _f("real_text", _STR), _f("real", labels), _f("nll", _F64),
        _f("ok", _BOOL, False), _f("error", _STR), _f("latency_s", _F64),
        _f("tokens_in", _I32), _f("tokens_out", _I32),
    ], metadata=_meta(label_space))


def rounds_schema(label_space: LabelSpace) -> pa.Schema:
    """Schema of the rounds table: one row per simulation round, with the mean field after the
    round's update (text and numeric shares), the round's action counts and timings."""
    return pa.schema([
        *_keys(), _f("meanfield_id", _STR), _f("meanfield_text", _STR),
        _f("meanfield_shares", _per_dim(label_space, pa.list_(_F64))),
        _f("counts", _per_dim(label_space, pa.list_(_I64))),
        _f("n_agents", _I32, False), _f("n_warmup", _I32, False), _f("n_failed", _I32, False),
        _f("t_policy_s", _F64), _f("t_meanfield_s", _F64), _f("t_total_s", _F64),
    ], metadata=_meta(label_space))


RUNS_SCHEMA = pa.schema([
    _f("run_id", _STR, False), _f("status", _STR, False), _f("created_at", _TIME, False),
    _f("finished_at", _TIME), _f("config_json", _STR, False), _f("versions_json", _STR, False),
    _f("model_id", _STR), _f("label_space_json", _STR, False),
    _f("n_simulations", _I32, False), _f("message", _STR),
])


#: one row per (unit, reference variant, dimension): what ``base-rate``, ``persistence`` and
#: ``crowd`` were fitted to (the same for every seed and intervention of the unit)
REFERENCES_SCHEMA = pa.schema([
    _f("unit_key", _STR, False), _f("event_id", _STR, False), _f("variant", _STR, False),
    _f("dimension", _STR, False), _f("options", pa.list_(_STR), False),
    _f("probs", pa.list_(_F64), False),  # every rollout agent's (crowd: its prior's mean)
    _f("persistence_weight", _F64),  # persistence: the warm-up mix's weight
    _f("crowd_prior", _F64),  # crowd: the prior's weight in decisions (inf: the base rate)
    _f("n_train_events", _I32, False),  # the events the base rate pools
    _f("n_fit_events", _I32),  # crowd: the events its prior was fitted on
])


def software_versions() -> dict[str, str]:
    """Installed versions of mfray, Python and the libraries a run depends on. Read from package
    metadata, so nothing heavy (torch) is imported just to learn its version."""
    out = {"python": platform.python_version()}
    for dist in ("mfray", "pyarrow", "ray", "torch", "transformers"):
        with suppress(importlib.metadata.PackageNotFoundError):  # absent: simply not recorded
            out[dist] = importlib.metadata.version(dist)
    return out


# --------------------------------------------------------------------------------------------
# low-level file operations: every OSError becomes a StoreError that names the path


@contextmanager
def _os_errors(action: str, path: Path) -> Iterator[None]:
    try:
        yield
    except OSError as exc:
        hint = " (disk full)" if exc.errno == errno.ENOSPC else ""
        raise StoreError(f"cannot {action} {path}: {exc.strerror or exc}{hint}") from exc


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _tmp_name(final: Path) -> Path:
    # a leading dot hides it from pyarrow / Ray directory scans; _TMP_MARK finds it on resume
    return final.with_name(f".{final.name}{_TMP_MARK}{os.getpid()}-{uuid.uuid4().hex[:8]}")


def _write_tmp(final: Path, write: Any) -> Path:
    """Write through ``write(file)`` to a fsynced temporary sibling of ``final``; returns it."""
    with _os_errors("create directory", final.parent):
        final.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(final)
    try:
        with _os_errors("write", tmp), open(tmp, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def _commit(tmp: Path, final: Path) -> None:
    with _os_errors("rename into place", final):
        os.replace(tmp, final)
        _fsync_dir(final.parent)


def _write_atomic(final: Path, write: Any) -> None:
    tmp = _write_tmp(final, write)
    try:
        _commit(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _parquet_writer(table: pa.Table) -> Any:
    return lambda fh: pq.write_table(table, fh, compression="zstd")


def _read_parquet(path: Path, schema: pa.Schema | None = None, **kwargs: Any) -> pa.Table:
    """Read one file; a missing, truncated or foreign file is a StoreError naming it."""
    try:
        table = pq.read_table(path, partitioning=None, **kwargs)
    except (OSError, pa.ArrowException) as exc:
        raise StoreError(f"cannot read {path}: {exc} (the file is missing, truncated or "
                         "corrupt; the run directory is damaged)") from exc
    if schema is not None and not table.schema.equals(schema):
        raise StoreError(f"{path} does not have the declared schema:\n{table.schema}")
    # Parquet names list items "element" where Arrow says "item": restore the declared names
    return table if schema is None else table.cast(schema)


def _json(value: Any, *, indent: int | None = None) -> str:
    def plain(obj: Any) -> Any:  # the few non-JSON types a resolved config may hold
        if isinstance(obj, os.PathLike):
            return os.fspath(obj)
        if isinstance(obj, set | frozenset):
            return sorted(obj)
        raise TypeError(f"{type(obj).__name__} is not JSON-serialisable")

    try:
        return json.dumps(value, indent=indent, default=plain)
    except (TypeError, ValueError) as exc:
        raise StoreError(f"cannot store the config as JSON: {exc}") from exc


# --------------------------------------------------------------------------------------------
# validation of the rows the engine hands over


def _as_table(rows: pa.Table | Sequence[Mapping[str, Any]], schema: pa.Schema,
              what: str) -> pa.Table:
    """Conform ``rows`` to ``schema`` (column set and types), naming the first column at fault.
    Integer columns may be of another width if the values fit (numpy gives int64)."""
    names = set(schema.names)
    if isinstance(rows, pa.Table):
        got = set(rows.column_names)
        if got != names:
            raise StoreError(f"{what}: missing columns {sorted(names - got)}, "
                             f"unknown columns {sorted(got - names)}")
        columns = []
        for field in schema:
            col = rows.column(field.name)
            if col.type != field.type:
                if not (pa.types.is_integer(col.type) and pa.types.is_integer(field.type)):
                    raise StoreError(f"{what}: column '{field.name}' has type {col.type}, "
                                     f"expected {field.type}")
                try:
                    col = col.cast(field.type, safe=True)
                except pa.ArrowInvalid as exc:
                    raise StoreError(f"{what}: column '{field.name}': {exc}") from exc
            columns.append(col)
        table = pa.Table.from_arrays(columns, schema=schema)
    else:
        for i, row in enumerate(rows):
            if set(row) != names:
                raise StoreError(f"{what}: row {i}: missing columns {sorted(names - set(row))}, "
                                 f"unknown columns {sorted(set(row) - names)}")
        arrays = []
        for field in schema:
            values = [r[field.name] for r in rows]
            try:
                _check_python_values(values, field)
                arrays.append(pa.array(values, type=field.type))
            except (pa.ArrowException, TypeError, ValueError) as exc:
                raise StoreError(f"{what}: column '{field.name}' does not hold values of type "
                                 f"{field.type}: {exc}") from exc
        table = pa.Table.from_arrays(arrays, schema=schema)
    for field in schema:
        if not field.nullable and table.column(field.name).null_count:
            raise StoreError(f"{what}: column '{field.name}' has null values")
    return table


def _check_python_values(values: list[Any], field: pa.Field) -> None:
    """What ``pa.array`` would accept silently but wrongly: a float in an integer column is
    truncated, an unknown key in a per-dimension struct is dropped."""
    if pa.types.is_integer(field.type) and any(isinstance(v, float) for v in values):
        raise TypeError("a float in an integer column")
    if pa.types.is_struct(field.type):
        dims = {f.name for f in field.type}
        for v in values:
            if isinstance(v, Mapping) and not set(v) <= dims:
                raise ValueError(f"unknown dimensions {sorted(set(v) - dims)}")


def _check_labels(table: pa.Table, label_space: LabelSpace, what: str) -> None:
    """Labels must be declared options; per-option vectors must have one entry per option."""
    for col, kind in (("action", "label"), ("real", "label"), ("probs", "vector"),
                      ("meanfield_shares", "vector"), ("counts", "vector")):
        if col not in table.column_names:
            continue
        for dim, options in label_space.items():
            values = pc.struct_field(table.column(col), dim)
            if kind == "label":
                bad = pc.and_(pc.is_valid(values),  # null: unknown / not available
                              pc.invert(pc.is_in(values, pa.array(options, _STR))))
            else:
                bad = pc.not_equal(pc.list_value_length(values), len(options))
            if pc.any(bad).as_py():
                index = pc.index(bad, True).as_py()
                raise StoreError(f"{what}: row {index}: column '{col}.{dim}' holds "
                                 f"{values[index].as_py()!r}; expected "
                                 + (f"one of {list(options)}" if kind == "label"
                                    else f"{len(options)} values, one per option"))


def _sort_unique(table: pa.Table, keys: list[str], round_: int, run_id: str,
                 what: str) -> pa.Table:
    """Check every row belongs to this run and round, sort by ``keys``, reject duplicate keys."""
    for col, expected in (("round", round_), ("run_id", run_id)):
        if table.num_rows and not pc.all(pc.equal(table.column(col), expected)).as_py():
            raise StoreError(f"{what}: column '{col}' holds values other than {expected!r}")
    table = table.sort_by([(k, "ascending") for k in keys])
    if table.num_rows > 1:
        key = np.stack([table.column(k).to_numpy() for k in keys], axis=1)
        dup = np.flatnonzero((key[1:] == key[:-1]).all(axis=1))
        if dup.size:
            raise StoreError(f"{what}: duplicate rows for "
                             f"{dict(zip(keys, key[dup[0]].tolist(), strict=True))}")
    return table


# --------------------------------------------------------------------------------------------
# the run directory


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
        with _os_errors("create the run directory", root):
            root.mkdir(parents=True, exist_ok=True)
        probe = root / f".write-probe{_TMP_MARK}{os.getpid()}"
        with _os_errors("write into the run directory", root):
            probe.write_bytes(b"probe")
            probe.unlink()
        space = {d: list(o) for d, o in label_space.items()}
        pretty = _json(dict(config), indent=2) + "\n"
        _write_atomic(root / "config.json", lambda fh: fh.write(pretty.encode()))
        info = {
            "run_id": run_id, "status": "running", "created_at": datetime.now(UTC),
            "finished_at": None, "config_json": _json(dict(config)),
            "versions_json": json.dumps(software_versions()), "model_id": model_id,
            "label_space_json": json.dumps(space), "n_simulations": n_simulations, "message": "",
        }
        _write_atomic(root / "runs.parquet",
                      _parquet_writer(pa.Table.from_pylist([info], schema=RUNS_SCHEMA)))
        return cls(root, info)

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

    def last_complete_round(self) -> int | None:
        """The highest complete round, or None before the first one."""
        done = self.completed_rounds()
        return done[-1] if done else None

    def first_damaged_round(self) -> int | None:
        """The first complete round with a file that is not readable Parquet (truncated or
        overwritten after it was written), or None."""
        for r in self.completed_rounds():
            for table in _TABLES:
                try:
                    pq.read_metadata(self._file(table, r))
                except (OSError, pa.ArrowException):
                    return r
        return None

    def discard_incomplete(self) -> list[Path]:
        """Remove what an interrupted write left: decision files of rounds that have no rounds
        file, and temporary files; and a damaged round (:meth:`first_damaged_round`) with every
        round after it, since later rounds were simulated from its state. Returns the removed
        files. Call before resuming: what is removed is simulated again."""
        damaged = self.first_damaged_round()
        complete = {r for r in self.completed_rounds() if damaged is None or r < damaged}
        removed: list[Path] = [p for p in self.run_dir.iterdir() if _TMP_MARK in p.name]
        for table in reversed(_TABLES):  # rounds files (the completion marks) go first
            base = self.run_dir / table
            for d in sorted(base.iterdir()) if base.is_dir() else []:
                m = _ROUND_DIR.match(d.name)
                if not m or not d.is_dir():
                    continue
                incomplete = int(m.group(1)) not in complete
                removed += [p for p in d.iterdir() if incomplete or _TMP_MARK in p.name]
        for path in removed:
            with _os_errors("remove", path):
                path.unlink()
                if path.parent != self.run_dir and not any(path.parent.iterdir()):
                    path.parent.rmdir()
        return removed

    # ---- writing

    def write_round(self, round: int, decisions: pa.Table | Sequence[Mapping[str, Any]],
                    rounds: pa.Table | Sequence[Mapping[str, Any]]) -> None:
        """Write one global round: the decisions and rounds rows of all simulations.

        Rows are validated against the declared schemas (a StoreError names the column at
        fault) and sorted by (sim_id, agent_index). Both files go to temporary names, are
        fsynced, and are renamed decisions first, rounds last, so a crash at any point leaves
        the round either complete or absent. Rewriting a complete round is an error.
        """
        if round < 0:
            raise StoreError(f"round must be >= 0, got {round}")
        if self._file("rounds", round).exists():
            raise StoreError(f"round {round} of run {self.run_id} is already written "
                             f"({self._file('rounds', round)}); rows are never duplicated")
        what = f"round {round}"
        dec = _as_table(decisions, self.decisions_schema, f"{what} decisions")
        rnd = _as_table(rounds, self.rounds_schema, f"{what} rounds")
        _check_labels(dec, self.label_space, f"{what} decisions")
        _check_labels(rnd, self.label_space, f"{what} rounds")
        dec = _sort_unique(dec, ["sim_id", "agent_index"], round, self.run_id,
                           f"{what} decisions")
        rnd = _sort_unique(rnd, ["sim_id"], round, self.run_id, f"{what} rounds")

        dec_final, rnd_final = self._file("decisions", round), self._file("rounds", round)
        temps: list[Path] = []
        try:
            temps.append(_write_tmp(dec_final, _parquet_writer(dec)))
            temps.append(_write_tmp(rnd_final, _parquet_writer(rnd)))
            _commit(temps[0], dec_final)
            _commit(temps[1], rnd_final)  # the round exists from this rename on
        except BaseException:
            for tmp in temps:
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
        _write_atomic(self.run_dir / "runs.parquet",
                      _parquet_writer(pa.Table.from_pylist([info], schema=RUNS_SCHEMA)))

    # ---- reading

    def run_info(self) -> dict[str, Any]:
        """The runs row as a dict (``*_json`` columns are JSON text)."""
        return _read_runs(self.run_dir)

    def config(self) -> dict[str, Any]:
        """The resolved config the run was created with."""
        path = self.run_dir / "config.json"
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise StoreError(f"cannot read {path}: {exc}") from exc

    def write_references(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """The references' fits (:data:`REFERENCES_SCHEMA`), written atomically at the run's
        start (again on resume: the same fits)."""
        table = pa.Table.from_pylist(list(rows), schema=REFERENCES_SCHEMA)
        _write_atomic(self.run_dir / "references.parquet", _parquet_writer(table))

    def read_references(self) -> pa.Table:
        """The references' fits; an empty table for a run without model-free references."""
        path = self.run_dir / "references.parquet"
        if not path.exists():
            return REFERENCES_SCHEMA.empty_table()
        return _read_parquet(path, REFERENCES_SCHEMA)

    def files(self, table: str = "decisions") -> list[Path]:
        """The files of ``table`` ("decisions" or "rounds") for the complete rounds, in order."""
        if table not in _TABLES:
            raise StoreError(f"unknown table {table!r}; expected one of {list(_TABLES)}")
        return [self._file(table, r) for r in self.completed_rounds()]

    def _read(self, table: str, columns: Sequence[str] | None, filter: Any) -> pa.Table:
        schema = self.decisions_schema if table == "decisions" else self.rounds_schema
        if columns is not None:
            unknown = [c for c in columns if c not in schema.names]
            if unknown:
                raise StoreError(f"unknown {table} columns {unknown}")
            schema = pa.schema([schema.field(c) for c in columns], metadata=schema.metadata)
        parts = [_read_parquet(p, schema, columns=None if columns is None else list(columns),
                               filters=filter) for p in self.files(table)]
        # files are sorted by (sim_id, agent_index) and read in round order: no sort needed
        return pa.concat_tables(parts) if parts else schema.empty_table()

    def read_decisions(self, columns: Sequence[str] | None = None,
                       filter: Any = None) -> pa.Table:
        """Decisions of all complete rounds, sorted by (round, sim_id, agent_index). ``filter``
        is a ``pyarrow.compute`` expression (or DNF list) as ``pyarrow.parquet.read_table`` takes."""
        return self._read("decisions", columns, filter)

    def read_rounds(self, columns: Sequence[str] | None = None, filter: Any = None) -> pa.Table:
        """Rounds rows of all complete rounds, sorted by (round, sim_id)."""
        return self._read("rounds", columns, filter)

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


def _read_runs(root: Path) -> dict[str, Any]:
    rows = _read_parquet(root / "runs.parquet", RUNS_SCHEMA).to_pylist()
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
