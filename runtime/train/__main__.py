"""`python -m ftune.runtime.train RUN_DIR`: the worker process (see train/worker.py)."""

import sys

from ftune.runtime.train.worker import main

sys.exit(main())
