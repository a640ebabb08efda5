"""Opening a run's store: a new run's, or a run to resume once its config and data are
checked, and where a resumed run goes on (its incomplete or damaged rounds dropped)."""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

from mfray.config import RunConfig
from mfray.config_migrate import stored_config
from mfray.data.identity import differences, fingerprint
from mfray.data.schema import Dataset
from mfray.errors import StoreError
from mfray.store import RunStore


def resume_point(store: RunStore) -> int:
    """Drop an incomplete round (and a damaged one with those after it) and return the first
    step still to run."""
    before = store.completed_rounds()
    store.discard_incomplete()
    done = store.completed_rounds()  # 0 .. the round before the first missing or damaged one
    if done != before:
        damaged = len(done)
        print(f"mfray: round {damaged} of {store.run_dir} is missing or has an unreadable "
              f"file; it and the {len(before) - len(done) - (damaged in before)} rounds after "
              "it are simulated again", file=sys.stderr)
    return max(done) + 1 if done else 0

def open_store(cfg: RunConfig, ds: Dataset, run_dir: str | Path, store: RunStore | None,
                model_id: str, n_simulations: int, run_id: str) -> RunStore:
    """A new run's store, with what it reads (``data.json``), or ``store`` (the resumed
    run's, checked by :func:`_resumed`)."""
    if store is None:
        store = RunStore.create(run_dir, run_id=run_id, config=cfg.to_dict(),
                                label_space=ds.label_space, model_id=model_id,
                                n_simulations=n_simulations)
        store.write_data_identity({
            "path": str(Path(cfg.sim.data).absolute()) if cfg.sim.data else None,
            "name": ds.name, "fingerprint": fingerprint(ds)})
        return store
    store.mark("running")
    return store

def resumed(cfg: RunConfig, ds: Dataset, run_dir: str | Path) -> tuple[RunStore, RunConfig]:
    """The run to resume and the config it was started with, once that is checked against
    ``cfg`` (``resources`` may differ: they do not change results) and its data against
    ``ds``."""
    store = RunStore.open(run_dir)
    store.check_writable()
    then = stored_config(RunConfig, store.config(), store.run_dir / "config.json")
    if replace(then, resources=cfg.resources) != cfg:
        raise StoreError(f"{run_dir}: the stored config differs from this one; resume with the "
                         "same config (see config.json in the run directory)")
    known = store.data_identity()
    if known is None:
        print(f"mfray: {run_dir} predates data fingerprints: the data it resumes on is not "
              "checked", file=sys.stderr)
    elif diff := differences(known["fingerprint"], fingerprint(ds)):
        raise StoreError(f"{run_dir}: this is not the data the run began with "
                         f"({known.get('path') or known.get('name')}): " + "; ".join(diff)
                         + ". Resume on that data, or start a new run")
    return store, then
