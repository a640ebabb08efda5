"""Declared Arrow schemas of a run's output tables: decisions, rounds, runs and references.
The per-dimension columns (labels, probabilities, counts) follow the run's label space, which
each schema also carries in its metadata."""

from __future__ import annotations

import json

import pyarrow as pa

from mfray.data.schema import LABEL_SPACE_KEY, LabelSpace
from mfray.errors import StoreError

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


#: one row per (unit, fitted variant, dimension): what ``base-rate``, ``warmup``,
#: ``persistence``, ``crowd`` and ``mf-cal`` were fitted to (the same for every seed and
#: intervention of the unit)
REFERENCES_SCHEMA = pa.schema([
    _f("unit_key", _STR, False), _f("event_id", _STR, False), _f("variant", _STR, False),
    _f("dimension", _STR, False), _f("options", pa.list_(_STR), False),
    _f("probs", pa.list_(_F64), False),  # every rollout agent's (crowd: its prior's mean)
    _f("persistence_weight", _F64),  # persistence: the warm-up mix's weight
    _f("like_training", _F64),  # shift-robust variants: P(the unit is like the training events)
    _f("crowd_prior", _F64),  # crowd: the prior's weight in decisions (inf: the base rate)
    _f("n_train_events", _I32, False),  # the events the base rate pools
    _f("n_fit_events", _I32),  # crowd: the events its prior was fitted on
])

