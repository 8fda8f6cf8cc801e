"""Housekeeping for the MLflow store: `python scripts/runs.py clean-stale | sync <dir>`.

The same command is installed as `pipeline-runs`: the code is pipeline.cli.runs.
"""

import sys

from pipeline.cli.runs import clean_stale, main, sync  # noqa: F401  (the tests call sync)

if __name__ == "__main__":
    sys.exit(main())
