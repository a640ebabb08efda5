"""The ``mfray`` command line: parse, load the config, call the library; no logic lives here.

Every error mfray anticipates (bad data, bad config, a run directory in the wrong state, and
any OS error: a read-only or full disk, with its path) ends in one line ``mfray: error: …`` on
stderr and exit code 2. The modules import only what parsing
needs; each command imports Ray, torch and the rest when it runs.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from mfray.cli.parser import build_parser
from mfray.errors import MfrayError

__all__ = ["build_parser", "main"]

#: the commands that take ``--section.key=value`` for ``--set section.key=value``
DOTTED = ("simulate", "train", "plan", "probe")


def main(argv: Sequence[str] | None = None) -> int:
    """Run one ``mfray`` command; the exit code (0, 2 for an error, 130 when interrupted)."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # `mfray simulate --sim.round_size=8` is `--set sim.round_size=8`
    dotted = [a[2:] for a in extra if a.startswith("--") and "=" in a and "." in a.split("=")[0]]
    if args.command not in DOTTED and extra or len(dotted) != len(extra):
        parser.error(f"unrecognized arguments: {' '.join(a for a in extra if a[2:] not in dotted)}")
    if dotted:
        args.set = [*(args.set or []), *dotted]
    try:
        args.func(args)
    except MfrayError as exc:
        print(f"mfray: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mfray: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader left (`mfray data info DIR | head`): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except OSError as exc:  # a read-only or full disk, a vanished directory: one line
        print(f"mfray: error: {exc.filename or 'a file'}: {exc.strerror or exc}",
              file=sys.stderr)
        return 2
    return 0
