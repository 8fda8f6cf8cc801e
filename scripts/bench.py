"""Training throughput: raw PyTorch loop vs classic tutorial loop vs this pipeline, in one process.

`make bench` (or `python scripts/bench.py --help`); see README ("Speed") and src/pipeline/bench.py.
"""

import sys

from pipeline.bench import main

if __name__ == "__main__":
    main(sys.argv[1:])
