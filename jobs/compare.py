"""Ray job entrypoint for ``mfray compare RUN_DIR...``; takes the same arguments."""

import sys

from mfray.cli import main

sys.exit(main(["compare", *sys.argv[1:]]))
