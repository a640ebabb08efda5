"""Ray job entrypoint for ``mfray evaluate RUN_DIR``; takes the same arguments."""

import sys

from mfray.cli import main

sys.exit(main(["evaluate", *sys.argv[1:]]))
