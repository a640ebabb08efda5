"""jobs/: the entrypoints forward to the CLI, the example configs and the runtime_env are valid,
and a simulate job submitted with `ray job submit` to a real local head (token auth on) runs."""

from __future__ import annotations

import json
import os
import re
import runpy
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from mfray.config import load_config
from mfray.data.schema import dataset_info, read_dataset, write_dataset
from mfray.data.synthetic import WorldParams, generate
from mfray.store import RunStore
from mfray.train.config import TrainConfig

REPO = Path(__file__).resolve().parents[1]
JOBS = REPO / "jobs"
BIN = Path(sys.executable).parent  # the environment's `ray` and `python`
JOIN = ["--set", "resources.address=auto"]  # what a job that starts simulations adds


@pytest.mark.parametrize(("script", "command", "added"), [
    ("simulate", "simulate", JOIN), ("train", "train", JOIN), ("evaluate", "evaluate", []),
    ("compare", "compare", []), ("sweep", "sweep", []),
])
def test_entrypoint_forwards_to_the_cli(script: str, command: str, added: list[str],
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[list[str]] = []

    def fake_main(argv: list[str]) -> int:
        seen.append(list(argv))
        return 7

    monkeypatch.setattr("mfray.cli.main", fake_main)
    monkeypatch.setattr(sys, "argv", [f"jobs/{script}.py", "--out", "x", "--set", "sim.seeds=[1]"])
    with pytest.raises(SystemExit) as stop:
        runpy.run_path(str(JOBS / f"{script}.py"), run_name="__main__")
    assert stop.value.code == 7  # the CLI's exit code is the job's
    assert seen == [[command, *added, "--out", "x", "--set", "sim.seeds=[1]"]]


def test_join_override_yields_to_a_later_set() -> None:
    """The entrypoint's ``resources.address=auto`` comes first, so a user's --set still wins."""
    cfg = load_config(JOBS / "configs" / "smoke.yaml",
                      ["resources.address=auto", "resources.address=10.0.0.1:6379"])
    assert cfg.resources.address == "10.0.0.1:6379"


def _is_train_config(path: Path) -> bool:
    return "train" in yaml.safe_load(path.read_text())


CONFIGS = sorted((JOBS / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_example_config_loads(path: Path) -> None:
    cfg = load_config(path, cls=TrainConfig) if _is_train_config(path) else load_config(path)
    # configs say what to simulate; the dataset and the cluster come with the command
    assert cfg.sim.data == "" and cfg.resources.address is None


def test_the_promised_configs_exist() -> None:
    by_name = {p.stem: load_config(p) for p in CONFIGS if not _is_train_config(p)}
    assert by_name["smoke"].policy.model == "scripted"
    assert by_name["rumoureval-smollm2"].policy.model is None  # SmolLM2, the default model
    gpu = by_name["gpu-vllm-1.5b"].policy
    assert gpu.engine == "vllm" and "1.5B" in str(gpu.model)
    assert any(_is_train_config(p) for p in CONFIGS)


def test_the_leave_one_event_out_recipe_is_the_readmes() -> None:
    """The README's real-data table names this file as its recipe: LoRA r8 alpha 16 on the top 8
    layers, lr 5e-4 cosine, batch 8, 384 sampled examples, 1 epoch, bf16 where the hardware
    computes it (auto: never emulated), B = 16, W = 50,
    events with >= 80 replies; the fold (held-out event, variant, seed) comes with the command."""
    path = JOBS / "configs" / "loo-smollm2.yaml"
    cfg = load_config(path, cls=TrainConfig)
    t = cfg.train
    assert (t.lora_r, t.lora_alpha, t.lora_last_layers) == (8, 16, 8)
    assert (t.lr, t.schedule, t.batch_size, t.max_examples, t.epochs) == (5e-4, "cosine", 8, 384, 1)
    assert t.bf16 == "auto" and cfg.policy.bf16 == "auto" and cfg.policy.model is None
    assert (cfg.sim.round_size, cfg.sim.warmup, cfg.sim.min_replies) == (16, 50, 80)
    assert t.held_out == () and "variant" not in yaml.safe_load(path.read_text())["train"]
    assert "jobs/configs/loo-smollm2.yaml" in (JOBS.parent / "README.md").read_text()


def test_runtime_env_is_small_and_holds_no_secret() -> None:
    env = yaml.safe_load((JOBS / "runtime_env.yaml").read_text())
    assert set(env) == {"excludes", "env_vars"}  # the working dir comes with --working-dir
    for big in (".git/", ".venv/", "runs/", "data/"):
        assert big in env["excludes"]
    assert all(isinstance(v, str) for v in env["env_vars"].values())  # Ray wants strings
    for name in env["env_vars"]:
        assert not re.search(r"(KEY|TOKEN|SECRET|PASSWORD)$", name.upper()), name
        assert not name.startswith("RAY_AUTH")  # auth belongs to the cluster, never the job


# ------------------------------------------------------------------ a real head, a real job


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _get(url: str, token: str | None) -> tuple[int, bytes]:
    """Status and body of a GET to the dashboard, with or without the token."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, b""


def _wait_for_dashboard(url: str, token: str) -> None:
    deadline = time.monotonic() + 60
    while True:
        try:
            if _get(f"{url}/api/version", token)[0] == 200:
                return
        except OSError:  # not listening yet
            pass
        assert time.monotonic() < deadline, f"no dashboard at {url}"
        time.sleep(0.5)


def _stop_group(pgid: int) -> None:
    """End every process of the head's own process group (never `ray stop`: it would end
    every Ray instance on the machine): SIGTERM, then SIGKILL what is left after 3 s."""
    try:
        os.killpg(pgid, signal.SIGTERM)
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            time.sleep(0.5)
            os.killpg(pgid, 0)
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass  # the group is gone


@pytest.fixture()
def ray_head() -> Iterator[tuple[str, dict[str, str], str]]:
    """A local head on free ports with token auth on, its token in a file of its own (the
    user's ~/.ray/auth_token is left alone); yields (dashboard URL, client env, token)."""
    if not (BIN / "ray").is_file():
        pytest.skip(f"no ray CLI next to {sys.executable}")
    # a short root: Ray's socket paths under it must fit the 107-character Unix limit
    root = Path(tempfile.mkdtemp(prefix="mfr-", dir="/tmp"))
    token = secrets.token_hex(32)
    (root / "token").write_text(token)
    env = {k: v for k, v in os.environ.items()
           if k not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "RAY_AUTH_TOKEN")}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(root / "token"),
               PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}")
    gcs, dashboard, agent, client = _free_ports(4)
    head = subprocess.Popen(
        [str(BIN / "ray"), "start", "--head", "--port", str(gcs), "--dashboard-host",
         "127.0.0.1", "--dashboard-port", str(dashboard), "--dashboard-agent-listen-port",
         str(agent), "--ray-client-server-port", str(client), "--num-cpus", "2",
         "--temp-dir", str(root / "ray"), "--disable-usage-stats"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True)  # the head's processes share this group, ended by its id
    try:
        out, _ = head.communicate(timeout=120)
        assert head.returncode == 0, out[-3000:]
        _wait_for_dashboard(f"http://127.0.0.1:{dashboard}", token)
        yield f"http://127.0.0.1:{dashboard}", env, token
    finally:
        _stop_group(head.pid)
        shutil.rmtree(root, ignore_errors=True)


def test_simulate_job_on_a_local_head_with_token_auth(
        ray_head: tuple[str, dict[str, str], str], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    url, env, token = ray_head
    assert _get(f"{url}/api/version", None)[0] == 401  # token auth is on
    _, ds = generate(WorldParams(n_events=2, min_agents=60, max_agents=60, warmup=20, seed=1))
    data = write_dataset(ds, tmp_path / "data")
    out = tmp_path / "run"
    submit = subprocess.run(
        [str(BIN / "ray"), "job", "submit", "--address", url, "--working-dir", ".",
         "--runtime-env", "jobs/runtime_env.yaml", "--",
         "python", "jobs/simulate.py", "--config", "jobs/configs/smoke.yaml",
         "--data", str(data), "--out", str(out)],
        check=False, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    log = submit.stdout + submit.stderr
    assert submit.returncode == 0 and "succeeded" in log, log[-4000:]

    store = RunStore.open(out)
    assert store.run_info()["status"] == "complete"
    cfg = load_config(JOBS / "configs" / "smoke.yaml")
    decisions = store.read_decisions(columns=["variant"])
    # one decision per reply, for every variant and seed
    replies = dataset_info(read_dataset(data))["replies"]
    assert decisions.num_rows == replies * len(cfg.sim.variants) * len(cfg.sim.seeds)
    assert set(decisions["variant"].to_pylist()) == set(cfg.sim.variants)

    # the simulation's actors ran on this head: the job joined it rather than starting its own
    status, body = _get(f"{url}/api/v0/actors?limit=1000", token)
    actors = json.loads(body)["data"]["result"]["result"]
    assert status == 200 and {"Population", "AgentShard"} <= {a["class_name"] for a in actors}

    # the evaluate entrypoint reads the run the job wrote (no Ray needed)
    monkeypatch.setattr(sys, "argv", ["jobs/evaluate.py", str(out)])
    with pytest.raises(SystemExit) as stop:
        runpy.run_path(str(JOBS / "evaluate.py"), run_name="__main__")
    assert stop.value.code == 0 and (out / "eval" / "summary.md").is_file()
