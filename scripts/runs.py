"""Housekeeping for the MLflow store.

    python scripts/runs.py clean-stale            # mark runs left RUNNING by dead processes KILLED
    python scripts/runs.py clean-stale --dry-run  # only list them
    python scripts/runs.py clean-stale --uri sqlite:////abs/path/mlruns/mlflow.db

A run that a live process is still writing (same host, pid alive, same process start time) is
never touched; runs from another host or without owner tags are listed and left alone.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mlflow.tracking import MlflowClient

from pipeline import PROJECT_ROOT
from pipeline.tracking.owners import HOST_TAG, PID_TAG, mark_stale, running_runs

DEFAULT_URI = f"sqlite:///{PROJECT_ROOT}/mlruns/mlflow.db"


def describe(run) -> str:
    tags = run.data.tags
    owner = f"{tags.get(HOST_TAG, '?')} pid {tags.get(PID_TAG, '?')}"
    return f"  {run.info.run_id}  {run.info.run_name or ''}  ({owner})"


def clean_stale(uri: str, dry_run: bool) -> int:
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).exists():
        print(f"error: no store at {uri}; pass --uri sqlite:////path/mlflow.db", file=sys.stderr)
        return 2
    client = MlflowClient(uri)
    found = running_runs(client)
    if found.stale and not dry_run:
        mark_stale(client, found.stale)
    verb = "would mark" if dry_run else "marked"
    print(f"{verb} {len(found.stale)} stale run(s) KILLED" + (":" if found.stale else ""))
    for run in found.stale:
        print(describe(run))
    if found.alive:
        print(f"left {len(found.alive)} run(s) alone: their process is still running")
    if found.unknown:
        print(f"left {len(found.unknown)} run(s) alone: written from another host or untagged:")
        for run in found.unknown:
            print(describe(run))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    clean = commands.add_parser("clean-stale", help="mark runs left RUNNING by dead processes")
    clean.add_argument("--uri", default=DEFAULT_URI, help=f"tracking URI (default {DEFAULT_URI})")
    clean.add_argument("--dry-run", action="store_true", help="list, change nothing")
    args = parser.parse_args()
    return clean_stale(args.uri, args.dry_run)


if __name__ == "__main__":
    sys.exit(main())
