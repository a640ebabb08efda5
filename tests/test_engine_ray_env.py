"""mfray/engine/ray_env.py: Ray's start-up hint to switch token authentication off is not shown
(mfray refuses that setting); Ray's other log records pass."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from mfray.engine.ray_env import RAY_AUTH_LOGGER, NoOptOutHint

REPO = Path(__file__).resolve().parents[1]
#: Ray's hint, split so that no line of this file switches authentication off
HINT = ("Token authentication is enabled for this Ray cluster. Set RAY_AUTH_MODE="
        "disabled to opt out. For more information, see https://docs.ray.io/en/latest/"
        "ray-security/token-auth.html")


def _record(message: str) -> logging.LogRecord:
    return logging.LogRecord(RAY_AUTH_LOGGER, logging.WARNING, __file__, 1, message, None, None)


def test_the_filter_drops_only_the_opt_out_hint() -> None:
    keep = NoOptOutHint()
    assert not keep.filter(_record(HINT))
    assert keep.filter(_record("Generated new authentication token and saved to ~/.ray/x"))
    assert keep.filter(_record("Token authentication is disabled for this Ray cluster."))


def test_a_local_ray_start_does_not_show_the_hint() -> None:
    """Ray prints the hint when ``ray`` is imported before the mode is set (the mode unset):
    the line must not reach the console, and Ray still starts with tokens on."""
    script = ("import ray\n"
              "from mfray.config import ResourcesConfig\n"
              "from mfray.engine.ray_env import ensure_ray\n"
              "ensure_ray(ResourcesConfig(num_cpus=1))\n"
              "import os; print('mode', os.environ.get('RAY_AUTH_MODE'))\n"
              "ray.shutdown()\n")
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_AUTH_MODE", "RAY_ADDRESS")}
    env["RAY_TMPDIR"] = tempfile.mkdtemp(prefix="mfr", dir="/tmp")  # short socket paths
    env["PYTHONPATH"] = str(REPO)
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                          text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    assert "opt out" not in done.stdout + done.stderr
    assert "mode token" in done.stdout


def test_an_unreachable_cluster_is_refused_at_once() -> None:
    """Ray retries an address whose head is down for minutes; mfray says so in seconds."""
    import socket
    import time

    import pytest

    from mfray.engine.ray_env import reachable
    from mfray.errors import MfrayError

    with socket.socket() as s:  # a port nobody listens on: bound, never listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        t0 = time.monotonic()
        with pytest.raises(MfrayError, match=rf"cannot reach the Ray cluster at 127.0.0.1:{port}"):
            reachable(f"127.0.0.1:{port}")
        with pytest.raises(MfrayError, match="cannot reach"):
            reachable(f"ray://127.0.0.1:{port}")
    assert time.monotonic() - t0 < 12
    with pytest.raises(MfrayError, match="not host:port"):
        reachable("127.0.0.1:http")
    reachable("auto")  # Ray's to resolve
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        reachable(f"127.0.0.1:{s.getsockname()[1]}")  # a listening head passes


def test_a_cluster_with_no_cpu_is_refused() -> None:
    import pytest

    from mfray.config import ResourcesConfig
    from mfray.errors import ConfigError

    with pytest.raises(ConfigError, match="resources.num_cpus must be >= 1"):
        ResourcesConfig(num_cpus=0)
