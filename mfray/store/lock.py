"""One writer per run directory: ``.lock`` names the process and host that write it.

A second ``mfray simulate --resume`` of a run that is being written is refused at once with
who holds it (before this, the loser of two resumes died later with "round 37 … already
written"). A lock left by a process that is gone (killed, its machine rebooted) is taken over,
with a line that says so; one held on another host cannot be checked from here, so it is
refused with the file to remove once that writer is known to be gone.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from contextlib import suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mfray.errors import StoreError

LOCK = ".lock"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


class RunLock:
    """The lock of one run directory; :meth:`acquire` once, :meth:`release` always."""

    def __init__(self, run_dir: str | os.PathLike[str]) -> None:
        self.path = Path(run_dir) / LOCK
        self.me = {"pid": os.getpid(), "host": socket.gethostname()}
        self.held = False

    def acquire(self) -> None:
        """Take the lock, or take over a dead writer's; a StoreError naming a live one."""
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._holder()
                if holder == {}:  # released meanwhile: try again
                    continue
                if holder is None or (holder.get("host") == self.me["host"]
                                      and not _alive(int(holder.get("pid", -1)))):
                    who = f"process {holder['pid']}" if holder else "an unreadable lock"
                    print(f"mfray: {self.path.parent}: taking over from {who}, which is gone",
                          file=sys.stderr)
                    with suppress(FileNotFoundError):
                        self.path.unlink()
                    continue
                raise StoreError(
                    f"{self.path.parent} is being written by process {holder.get('pid')} on "
                    f"{holder.get('host')} since {holder.get('since')}: wait for it to end"
                    + ("" if holder.get("host") == self.me["host"] else
                       f" (once it is gone, remove {self.path})")) from None
            except OSError as exc:
                raise StoreError(f"cannot lock {self.path.parent}: {exc.strerror or exc}"
                                 ) from None
            with os.fdopen(fd, "w") as fh:
                json.dump(self.me | {"since": datetime.now(UTC).isoformat(timespec="seconds")},
                          fh)
            self.held = True
            return
        raise StoreError(f"cannot lock {self.path.parent}: another writer keeps taking it")

    def _holder(self) -> dict[str, Any] | None:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def release(self) -> None:
        if self.held:
            with suppress(OSError):
                self.path.unlink()
            self.held = False
