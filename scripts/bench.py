"""Training throughput: raw PyTorch loop vs classic tutorial loop vs this pipeline, in one process.

`make bench` (or `python scripts/bench.py --help`); the method and the current figures are in
docs/performance.md, the code in scripts/benchmarks/. Results go to outputs/bench/ (`--out`).
`python scripts/bench.py protocol --help`: the fair-comparison protocol's wall time instead.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # scripts/benchmarks as `benchmarks`

if __name__ == "__main__":
    if sys.argv[1:2] == ["protocol"]:
        from benchmarks.protocol import main

        main(sys.argv[2:])
    else:
        from benchmarks.main import main

        main(sys.argv[1:])
