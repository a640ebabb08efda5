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

from mfray.store.run import STATUSES, RunStore, read_decisions, read_rounds, software_versions
from mfray.store.schema import REFERENCES_SCHEMA, RUNS_SCHEMA, decisions_schema, rounds_schema

__all__ = [
    "REFERENCES_SCHEMA", "RUNS_SCHEMA", "STATUSES", "RunStore", "decisions_schema",
    "read_decisions", "read_rounds", "rounds_schema", "software_versions",
]
