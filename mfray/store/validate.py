"""Validation of the rows the engine hands over: column set and types, label values, and the
sort and uniqueness of a round's rows."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mfray.data.schema import LabelSpace
from mfray.errors import StoreError

_STR = pa.string()


def as_table(rows: pa.Table | Sequence[Mapping[str, Any]], schema: pa.Schema,
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


def check_labels(table: pa.Table, label_space: LabelSpace, what: str) -> None:
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


def sort_unique(table: pa.Table, keys: list[str], round_: int, run_id: str,
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
