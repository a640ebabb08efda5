"""Ray job entrypoint for ``mfray simulate``; takes the same arguments (see jobs/README.md)."""

import sys

from mfray.cli import main

# A job's driver runs inside the cluster that runs the job, so it joins that cluster (Ray sets
# RAY_ADDRESS for it) rather than starting a local instance; a later --set still wins.
sys.exit(main(["simulate", "--set", "resources.address=auto", *sys.argv[1:]]))
