"""`python -m ftune.runtime.train RUN_DIR`: the worker process (see train/worker.py)."""

import atexit
import os
import sys

from ftune.runtime.train.worker import main

code = 1


def _leave() -> None:
    """Registered first, so it runs after every other exit handler (trackers flush and close in theirs): then
    the process ends without tearing down torch's modules one by one, which took 1.5-2 s of every run here.
    Everything the run writes is already on disk: events and status are unbuffered or atomic, stdio is flushed."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


atexit.register(_leave)
code = main()
sys.exit(code)
