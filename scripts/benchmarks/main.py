"""`scripts/bench.py`: training throughput (the default) or start-up (`--startup`).

Only argparse is loaded before the arguments are read: `--help` answers at once, and `--startup`
measures other processes without torch in its own.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pipeline


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Training throughput: raw PyTorch loop vs classic tutorial loop vs this "
        "pipeline, in one process (docs/performance.md); or, with --startup, how long each "
        "command takes to start."
    )
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[64, 512])
    parser.add_argument("--reps", type=int, default=5, help="interleaved repetitions (rounds)")
    parser.add_argument("--epochs", type=int, default=3, help="epochs of (a), (c) per rep")
    parser.add_argument("--n", type=int, default=60_000, help="synthetic training samples")
    parser.add_argument("--data-root", help="real IDX files (as data.source=local reads them)")
    parser.add_argument("--data-name", default="mnist", choices=["mnist", "fashion_mnist"])
    parser.add_argument("--torch-threads", type=int, default=1)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--out", default=str(pipeline.PROJECT_ROOT / "outputs" / "bench"))
    parser.add_argument("--sweep", action="store_true", help="also time one optimizer_comparison")
    parser.add_argument(
        "--sweep-launchers", nargs="+", default=["basic", "joblib"], choices=["basic", "joblib"]
    )
    parser.add_argument(
        "--startup",
        action="store_true",
        help="instead: every command's --help and a default training run, as ratios to "
        "`python -c 'import torch'` (startup.json, startup.md)",
    )
    parser.add_argument(
        "--train-args",
        nargs="*",
        default=[],
        help="with --startup: overrides for its training run (default: none, a default run)",
    )
    return parser.parse_args(argv)


def write(out: Path, name: str, results: dict, table: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(results, indent=1))
    (out / f"{name}.md").write_text(table)
    print("\n" + table + f"\nwritten: {out / f'{name}.json'}, {out / f'{name}.md'}")


def main(argv: list[str] | None = None) -> dict:
    args = parse(argv)
    if args.startup:
        from benchmarks import startup

        results = startup.run(args.reps, args.train_args)
        write(Path(args.out), "startup", results, startup.markdown(results))
        return results
    import logging
    import warnings

    from benchmarks.summary import markdown
    from benchmarks.throughput import run

    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning_fabric").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    results = run(args)
    write(Path(args.out), "bench", results, markdown(results))
    return results
