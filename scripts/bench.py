"""Training throughput: raw PyTorch loop vs classic tutorial loop vs this pipeline, in one process.

`make bench` (or `python scripts/bench.py --help`); the method and the current figures are in
docs/performance.md, the code in scripts/benchmarks/. Results go to outputs/bench/ (`--out`).
`python scripts/bench.py protocol --help`: the fair-comparison protocol's wall time instead;
`python scripts/bench.py population --help`: a population's member-samples/s against the raw loop;
`python scripts/bench.py probe --help`: what the step probe (probe.every_n_steps) costs a run.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # scripts/benchmarks as `benchmarks`

from benchmarks.main import main as throughput_or_startup  # noqa: E402  (argparse only)


def main(argv: list[str]) -> dict:
    if argv[:1] == ["protocol"]:
        from benchmarks.protocol import main as protocol

        return protocol(argv[1:])
    if argv[:1] == ["population"]:
        from benchmarks.population import main as population

        return population(argv[1:])
    if argv[:1] == ["probe"]:
        from benchmarks.probe_cost import main as probe

        return probe(argv[1:])
    return throughput_or_startup(argv)


if __name__ == "__main__":
    main(sys.argv[1:])
