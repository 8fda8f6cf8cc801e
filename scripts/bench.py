"""Training throughput: raw PyTorch loop vs classic tutorial loop vs this pipeline, in one process.

`make bench` (or `python scripts/bench.py --help`); the method and the current figures are in
docs/performance.md, the code in scripts/benchmarks/. Results go to outputs/bench/ (`--out`).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # scripts/benchmarks as `benchmarks`

from benchmarks.main import main  # noqa: E402

if __name__ == "__main__":
    main(sys.argv[1:])
