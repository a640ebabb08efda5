"""Starting or joining Ray with token authentication kept on.

Ray ≥ 2.59 enables token authentication on local clusters. A local instance started by
``ray.init()`` makes and uses its own token; a client of an existing cluster needs
``RAY_AUTH_MODE=token`` and the token (``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH`` or
``~/.ray/auth_token``). mfray sets the mode when the caller has not, and never switches it off.
"""

from __future__ import annotations

import logging
import os
import sys

from mfray.config import ResourcesConfig
from mfray.errors import MfrayError

#: the logger of Ray's start-up line about token authentication
RAY_AUTH_LOGGER = "ray._private.authentication.authentication_token_setup"


class NoOptOutHint(logging.Filter):
    """Drops Ray's "Set RAY_AUTH_MODE=disabled to opt out" start-up line (Ray prints it when
    ``ray`` was imported before mfray set the mode): mfray refuses that setting, so the hint
    only misleads. Every other record passes."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "=disabled to opt out" not in record.getMessage()


def _hide_opt_out_hint() -> None:
    log = logging.getLogger(RAY_AUTH_LOGGER)
    if not any(isinstance(f, NoOptOutHint) for f in log.filters):
        log.addFilter(NoOptOutHint())


def ensure_ray(resources: ResourcesConfig) -> None:
    """Connect to ``resources.address`` (or to ``$RAY_ADDRESS``, which ``ray job submit`` sets
    for a job's driver), or start a local instance (dashboard off, loopback)."""
    mode = os.environ.get("RAY_AUTH_MODE")
    if mode not in (None, "token"):
        raise MfrayError(f"RAY_AUTH_MODE={mode!r}: mfray runs Ray with token authentication "
                         "only; unset it or set RAY_AUTH_MODE=token")
    if mode is None and "ray" not in sys.modules:
        # Ray reads the mode when it is imported; a local instance enables tokens by itself
        os.environ["RAY_AUTH_MODE"] = "token"
    import ray

    if ray.is_initialized():
        return
    kwargs: dict = {"log_to_driver": False, "configure_logging": False}
    address = resources.address or os.environ.get("RAY_ADDRESS")
    if address:
        kwargs["address"] = address
    else:
        # "local": a new instance, also where `ray start` left a cluster that ray.init()
        # would join otherwise (with this run's num_cpus refused)
        kwargs.update(address="local", include_dashboard=False, num_cpus=resources.num_cpus,
                      _node_ip_address="127.0.0.1")
    if address:
        reachable(address)
    _hide_opt_out_hint()
    try:
        ray.init(**kwargs)
    except (OSError, RuntimeError, ValueError) as exc:  # OSError includes ConnectionError
        where = address or "a local instance"
        raise MfrayError(f"cannot start or join Ray ({where}): {exc}") from None
    if ray.cluster_resources().get("CPU", 0) < 1:
        raise MfrayError(f"the Ray cluster ({address or 'a local instance'}) has no CPU: "
                         "every actor needs one to start, so nothing could be placed")


CONNECT_TIMEOUT_S = 5.0  # a head that does not answer a TCP connect in this long is down


def reachable(address: str) -> None:
    """Refuse at once a cluster address whose head does not take a TCP connection (Ray itself
    retries for minutes in silence). ``auto`` and ``local`` are Ray's to resolve."""
    import socket

    host_port = address.removeprefix("ray://").rsplit("/", 1)[0]
    if address in ("auto", "local") or ":" not in host_port:
        return
    host, port = host_port.rsplit(":", 1)
    try:
        with socket.create_connection((host.strip("[]"), int(port)), CONNECT_TIMEOUT_S):
            return
    except ValueError:
        raise MfrayError(f"resources.address {address!r}: not host:port") from None
    except OSError as exc:
        raise MfrayError(f"cannot reach the Ray cluster at {address}: "
                         f"{exc.strerror or exc} (is its head running? `ray start --head` "
                         "prints the address to use)") from None
