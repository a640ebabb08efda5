"""Ray job entrypoint for ``mfray sweep --config FILE --out DIR``; takes the same arguments."""

import sys

from mfray.cli import main

sys.exit(main(["sweep", *sys.argv[1:]]))
