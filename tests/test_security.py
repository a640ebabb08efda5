"""Security: an API key never reaches a file, log or table; no unsafe deserialisation or remote
code; token authentication and a loopback-only dashboard everywhere (issue: reliability)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from http.server import ThreadingHTTPServer
from pathlib import Path

import pytest

from mfray.store import RunStore
from tests.test_llm_openai import Completions

ROOT = Path(__file__).resolve().parents[1]
KEY = "sk-dummy-key-3f9a1c77e2"


class Leaky(Completions):
    """The fake endpoint, but every error body repeats the Authorization header, as some
    servers do: a client that stored error texts verbatim would leak the key."""

    def _send(self, code: int, body: object) -> None:
        if code >= 400 and isinstance(body, dict):
            body = body | {"detail": f"with {self.headers.get('Authorization')}"}
        super()._send(code, body)


class Server(ThreadingHTTPServer):
    request_queue_size = 128  # the client keeps 16 requests in flight


@pytest.fixture()
def leaky_server() -> Iterator[str]:
    Completions.seen, Completions.auth, Completions.payloads = {}, [], []
    Completions.refused, Completions.fail_mod = set(), 7
    srv = Server(("127.0.0.1", 0), Leaky)
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/v1"
    srv.shutdown()
    srv.server_close()
    Completions.fail_mod = 0


def test_the_api_key_is_in_no_output_file(leaky_server: str, small_world_dir: Path,
                                          tmp_path: Path) -> None:
    ray_tmp = Path(tempfile.mkdtemp(prefix="mfk", dir="/tmp"))  # Ray's sockets need short paths
    env = os.environ | {"OPENAI_API_KEY": KEY, "RAY_TMPDIR": str(ray_tmp)}
    run = tmp_path / "run"
    outputs = []
    for args in (["simulate", "--data", str(small_world_dir), "--out", str(run),
                  "--url", leaky_server, "--model", "served-model", "--variants", "state,mf",
                  "--set", "sim.seeds=[0]", "--set", "sim.warmup=20",
                  "--set", "sim.max_failure_rate=0.9", "--set", "policy.log_prompts=true",
                  "--set", "policy.max_retries=0", "--set", "resources.num_cpus=2"],
                 ["compare", str(run)], ["evaluate", str(run)]):
        done = subprocess.run([sys.executable, "-m", "mfray.cli", *args], env=env, timeout=600,
                              check=False, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        outputs += [done.stdout, done.stderr]
    assert {f"Bearer {KEY}"} == set(Completions.auth)  # the key was really used
    failed = [r for r in RunStore.open(run).read_decisions().to_pylist() if not r["ok"]]
    # the error bodies, which repeated the key, were kept: scrubbed
    assert failed and all("HTTP 400" in r["error"] and "Bearer ***" in r["error"]
                          for r in failed)
    files = [p for p in [*run.rglob("*"), *ray_tmp.rglob("*")] if p.is_file()
             and not p.is_socket()]
    assert len(files) > 20 and any(p.name == "prompts.jsonl" for p in files)
    leaks = [str(p) for p in files if KEY.encode() in p.read_bytes()]
    shutil.rmtree(ray_tmp, ignore_errors=True)
    assert leaks == [] and not any(KEY in text for text in outputs)
    assert "OPENAI_API_KEY" in json.dumps(RunStore.open(run).config())  # only its name


SOURCES = sorted((ROOT / "mfray").rglob("*.py"))


@pytest.mark.parametrize(("pattern", "why"), [
    (r"\bpickle\.loads?\(|\bcloudpickle\.loads?\(|\bdill\.", "no pickle of files"),
    (r"torch\.load\((?!.*weights_only=True)", "torch.load only with weights_only=True"),
    (r"trust_remote_code\s*=\s*True", "trust_remote_code stays off"),
    (r"allow_pickle\s*=\s*True", "numpy loads without pickle"),
    (r"\byaml\.load\(|\byaml\.unsafe_load\(", "yaml.safe_load only"),
    (r"(?<![.\w])eval\(|(?<![.\w])exec\(", "no eval of text"),
    (r"\.extractall\(", "archives are extracted member by member, checked"),
])
def test_no_unsafe_loading_in_the_library(pattern: str, why: str) -> None:
    hits = [f"{p.relative_to(ROOT)}:{n}" for p in SOURCES
            for n, line in enumerate(p.read_text().splitlines(), 1) if re.search(pattern, line)]
    assert hits == [], why


DOCS = [ROOT / "README.md", ROOT / "Makefile", ROOT / ".ci" / "run",
        *(ROOT / "jobs").rglob("*"), *(ROOT / "cluster").rglob("*"),
        *(ROOT / "tests").rglob("*.py")]


def test_token_auth_is_never_switched_off() -> None:
    off = re.compile(r"RAY_AUTH_MODE\s*[=:]\s*['\"]?disabled|mode:\s*['\"]?disabled")
    said = re.compile(r"refuse|never|not ")  # a line that warns against it is fine
    hits = [f"{p.relative_to(ROOT)}:{n}" for p in DOCS if p.is_file() and p != Path(__file__)
            for n, line in enumerate(p.read_text(errors="replace").splitlines(), 1)
            if off.search(line) and not said.search(line)]
    assert hits == []


def test_local_ray_keeps_the_dashboard_on_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    import ray

    from mfray.config import ResourcesConfig
    from mfray.engine import ray_env

    seen: dict = {}
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kw: seen.update(kw))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    ray_env.ensure_ray(ResourcesConfig())
    assert seen["include_dashboard"] is False and seen["_node_ip_address"] == "127.0.0.1"
    # every documented local head binds its dashboard to loopback
    readme = (ROOT / "README.md").read_text() + (ROOT / "jobs" / "README.md").read_text()
    heads = re.findall(r"ray start --head[^\n]*", readme)
    assert heads and all("--dashboard-host 127.0.0.1" in h for h in heads)
