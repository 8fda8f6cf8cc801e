"""`pipeline-compare` (= `python scripts/compare.py`): a sweep's comparison report from MLflow.

    pipeline-compare                          # the latest sweep
    pipeline-compare --sweep <parent run id or name> --target-acc 0.95
    pipeline-compare tracking.uri=...         # Hydra overrides pick the store

Every report goes into a new folder report/, report-2/, ... under --out and on the parent run:
a stored report is a record, and a second one never replaces the first. A fair comparison's
parent (tag protocol.id) gets its own report (pipeline.sweeps.protocol.report).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pipeline
from pipeline.exit_codes import ExitCode


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0].split(": ", 1)[1])
    parser.add_argument("--sweep", help="parent run id or name (default: the latest sweep)")
    parser.add_argument(
        "--target-acc",
        type=float,
        help="validation target for 'epochs/steps to reach' (default 0.9; a fair comparison's "
        "own: hydra.sweeper.target_val_acc)",
    )
    parser.add_argument("--out", type=Path, help="folder (default outputs/reports/<run id>)")
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. tracking.uri=...")
    args = parser.parse_args(argv)
    if args.target_acc is not None and not 0 < args.target_acc <= 1:
        parser.error(f"--target-acc {args.target_acc} must be in (0, 1], e.g. --target-acc 0.9")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    # Loaded after the arguments are read, so that --help and a usage error come back at once.
    from pipeline.cli.logs import quiet_libraries
    from pipeline.config.resolvers import register_resolvers

    quiet_libraries()  # before MLflow loads
    register_resolvers()  # conf/ uses ${pipeline_root:} and friends
    from hydra import compose, initialize_config_dir
    from mlflow.tracking import MlflowClient

    from pipeline.sweeps.protocol.report import write_protocol_report
    from pipeline.sweeps.protocol.runs import ID_TAG
    from pipeline.sweeps.report import find_parent, write_report

    # The store is the one train.py uses: the same config, the same overrides.
    with initialize_config_dir(version_base="1.3", config_dir=str(pipeline.CONFIG_DIR)):
        cfg = compose("train", overrides=args.overrides)
    client = MlflowClient(cfg.tracking.uri)
    try:
        parent_id = find_parent(client, cfg.tracking.experiment, args.sweep)
        folder = args.out or pipeline.PROJECT_ROOT / "outputs" / "reports" / parent_id
        if ID_TAG in client.get_run(parent_id).data.tags:  # a fair comparison: its own report
            write_protocol_report(client, parent_id, folder, args.target_acc)
        else:
            write_report(client, parent_id, folder, args.target_acc or 0.9)
    except (LookupError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return ExitCode.BAD_INPUT
    return ExitCode.OK
