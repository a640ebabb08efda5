"""``python -m mfray.cli``: the ``mfray`` command."""

import sys

from mfray.cli import main

sys.exit(main())
