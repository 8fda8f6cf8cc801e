"""Comparison report of a sweep, read from MLflow (docs/sweeps-and-reports.md).

python scripts/compare.py                          # the latest sweep
python scripts/compare.py --sweep <parent run id or name> --target-acc 0.95
python scripts/compare.py tracking.uri=...         # Hydra overrides pick the store

The same command is installed as `pipeline-compare`: the code is pipeline.cli.compare.
"""

import sys

from pipeline.cli.compare import main

if __name__ == "__main__":
    sys.exit(main())
