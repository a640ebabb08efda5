"""Ray job entrypoint for ``mfray train policy|meanfield|classifier``; takes the same arguments."""

import sys

from mfray.cli import main

# The driver joins the cluster that runs the job (Ray sets RAY_ADDRESS for it), as in simulate.
sys.exit(main(["train", "--set", "resources.address=auto", *sys.argv[1:]]))
