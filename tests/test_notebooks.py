"""The notebooks: stored without outputs, reading only through mfray's store and evaluation, and
executing (nbclient) against a small run with variants and an intervention, drawing their plots.

The kernel is this interpreter (a kernel spec written to a temporary directory), so the test
needs no user-level Jupyter set-up and cannot pick up another Python's ``python3`` kernel.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from mfray.config import PolicyConfig, ResourcesConfig, RunConfig, SimConfig
from mfray.data.schema import read_dataset, write_dataset
from mfray.data.synthetic import WorldParams, generate
from mfray.engine import simulate
from mfray.interventions import Intervention

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
kernelspec = pytest.importorskip("ipykernel.kernelspec")

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
#: notebook -> the fewest plots it must draw on the fixture run (one dimension, one intervention)
PLOTS = {"run_overview.ipynb": 2, "variant_comparison.ipynb": 2, "intervention_effect.ipynb": 1}
#: what a notebook may import from mfray: the store, the evaluation and the config types
ALLOWED_IMPORTS = re.compile(r"^mfray\.(store|evaluate(\.\w+)?|config)$")
KERNEL = "mfray-notebook-test"


@pytest.fixture(scope="session")
def notebook_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small complete run: 2 events x 2 seeds x (state, mf, base-rate, persistence), each with
    a twin that gets 40 injected `deny` posts after round 2; the scripted world-rule policy."""
    tmp = tmp_path_factory.mktemp("notebook-run")
    _, ds = generate(WorldParams(n_events=2, min_agents=80, max_agents=80, warmup=20))
    data = write_dataset(ds, tmp / "data")
    cfg = RunConfig(
        sim=SimConfig(data=str(data), variants=("state", "mf", "base-rate", "persistence"),
                      seeds=(0, 1), warmup=20,
                      interventions=(Intervention("deny40", round=2, label="deny", count=40),)),
        policy=PolicyConfig(model="scripted-world"), resources=ResourcesConfig(num_cpus=2))
    return simulate(cfg, read_dataset(data), tmp / "run", progress=False).run_dir


@pytest.fixture(scope="session")
def kernel_dirs(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """A kernel spec directory holding one kernel: this interpreter with ipykernel."""
    root = tmp_path_factory.mktemp("kernels")
    kernelspec.write_kernel_spec(root / KERNEL)
    return [str(root)]


def _read(name: str):
    return nbformat.read(NOTEBOOKS / name, as_version=4)


def test_the_notebooks_are_the_expected_ones() -> None:
    assert sorted(p.name for p in NOTEBOOKS.glob("*.ipynb")) == sorted(PLOTS)


@pytest.mark.parametrize("name", sorted(PLOTS))
def test_stored_clean_and_reading_only_through_the_library(name: str) -> None:
    nb = _read(name)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(c.outputs == [] and c.execution_count is None for c in code), \
        f"{name} is stored with outputs: clear them before committing"
    assert 'os.environ.get("MFRAY_RUN_DIR"' in code[0].source, "the first cell sets RUN_DIR"
    modules = {m for c in code for m in re.findall(r"^\s*(?:from|import) (mfray\S*)",
                                                   c.source, re.MULTILINE)}
    assert modules and all(ALLOWED_IMPORTS.match(m) for m in modules), modules


@pytest.mark.parametrize("name", sorted(PLOTS))
def test_executes_against_a_run_and_draws_its_plots(name: str, notebook_run: Path,
                                                    kernel_dirs: list[str]) -> None:
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import AsyncKernelManager

    nb = _read(name)
    km = AsyncKernelManager(kernel_name=KERNEL,
                            kernel_spec_manager=KernelSpecManager(kernel_dirs=kernel_dirs))
    client = nbclient.NotebookClient(nb, km=km, timeout=120,
                                     resources={"metadata": {"path": str(NOTEBOOKS)}})
    # the parameter cell reads MFRAY_RUN_DIR; an inherited MPLBACKEND (e.g. Agg) would replace
    # the inline backend, which renders with Agg and returns the figures as PNG outputs
    env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}
    client.execute(env=env | {"MFRAY_RUN_DIR": str(notebook_run)})

    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    errors = [o for o in outputs if o.output_type == "error"
              or (o.output_type == "stream" and o.name == "stderr" and "Traceback" in o.text)]
    assert not errors, errors
    pngs = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(pngs) >= PLOTS[name], f"{name} drew {len(pngs)} plots, expected {PLOTS[name]}"
    assert all(o.data["image/png"] for o in pngs)
    # the stored notebook is untouched: execution happened in memory only
    assert all(c.outputs == [] for c in _read(name).cells if c.cell_type == "code")
