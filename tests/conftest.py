"""Shared fixtures: a small synthetic world, and the location of the real data (optional)."""

from __future__ import annotations

from pathlib import Path

import pytest

from mfray.data.schema import write_dataset
from mfray.data.synthetic import WorldParams, generate

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
RUMOUREVAL_DEV = SHARED_DATA / "rumoureval2017-dev"
FIXTURES = Path(__file__).resolve().parent / "fixtures"

SMALL_WORLD = WorldParams(n_events=4, min_agents=60, max_agents=90, seed=3)


def require_real_data() -> Path:
    """The real RumourEval copy beside the repo, or skip the test."""
    if not RUMOUREVAL_DEV.is_dir():
        pytest.skip(f"real data not present at {RUMOUREVAL_DEV} (../shared/data)")
    return RUMOUREVAL_DEV


@pytest.fixture(scope="session")
def small_world_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 4-event synthetic world written as a dataset directory."""
    _, ds = generate(SMALL_WORLD)
    return write_dataset(ds, tmp_path_factory.mktemp("world") / "data")
