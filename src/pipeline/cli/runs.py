"""`pipeline-runs` (= `python scripts/runs.py`): housekeeping for the MLflow store.

    pipeline-runs clean-stale            # mark runs left RUNNING by dead processes KILLED
    pipeline-runs clean-stale --dry-run  # only list them
    pipeline-runs clean-stale --uri sqlite:////abs/path/mlruns/mlflow.db
    pipeline-runs sync outputs/runs/<time>_<pid>   # send what a run could not (spool)
    pipeline-runs sync <dir>/mlflow-spool.jsonl --uri http://127.0.0.1:5050

A run that a live process is still writing (same host, pid alive, same process start time) is
never touched; runs from another host or without owner tags are listed and left alone.

`sync` sends a run's spool - the metrics, artifacts and final status that the store did not take
while it was down or locked (pipeline.tracking.replay) - in order, to the store each record names
(or --uri), marking each record sent: running it again sends nothing twice.

MLflow is imported by the command that needs it, so that `--help` answers at once.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pipeline import PROJECT_ROOT
from pipeline.exit_codes import ExitCode

DEFAULT_URI = f"sqlite:///{PROJECT_ROOT}/mlruns/mlflow.db"


def describe(run) -> str:
    from pipeline.tracking.owners import HOST_TAG, PID_TAG

    tags = run.data.tags
    owner = f"{tags.get(HOST_TAG, '?')} pid {tags.get(PID_TAG, '?')}"
    return f"  {run.info.run_id}  {run.info.run_name or ''}  ({owner})"


def clean_stale(uri: str, dry_run: bool) -> int:
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).exists():
        print(f"error: no store at {uri}; pass --uri sqlite:////path/mlflow.db", file=sys.stderr)
        return ExitCode.BAD_INPUT
    from mlflow.tracking import MlflowClient

    from pipeline.tracking.owners import mark_stale, running_runs

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
    return ExitCode.OK


def sync(target: Path, uri: str | None) -> int:
    from pipeline.tracking import replay
    from pipeline.tracking.records import describe

    try:
        done = replay.sync(target, uri)
    except (FileNotFoundError, RuntimeError, replay.Untrusted) as error:
        print(f"error: {error}", file=sys.stderr)
        return ExitCode.BAD_INPUT
    runs = sorted({r["run_id"] for r in done.sent + done.left})
    if done.sent:
        print(f"sent {describe(done.sent)} of run(s) {', '.join(runs)}")
    elif not done.left and not done.untrusted:
        print(f"nothing to send: the {done.before} record(s) in {done.spool} were sent before")
    for error in done.errors:
        print(f"error: not sent: {error}", file=sys.stderr)
    if done.left:
        print(
            f"error: {describe(done.left)} still not sent, kept in {done.spool}; run this "
            "again when the store answers",
            file=sys.stderr,
        )
        return ExitCode.ERROR
    if done.untrusted:  # the journal was edited: the store was not touched by those records
        return ExitCode.BAD_INPUT
    return ExitCode.OK


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].split(": ", 1)[1])
    commands = parser.add_subparsers(dest="command", required=True)
    clean = commands.add_parser("clean-stale", help="mark runs left RUNNING by dead processes")
    clean.add_argument("--uri", default=DEFAULT_URI, help=f"tracking URI (default {DEFAULT_URI})")
    clean.add_argument("--dry-run", action="store_true", help="list, change nothing")
    send = commands.add_parser("sync", help="send a run's spool (what the store did not take)")
    send.add_argument("target", type=Path, help="the run's output folder or its spool file")
    send.add_argument("--uri", help="send to this store instead of the one each record names")
    args = parser.parse_args(argv)
    if args.command == "sync":
        return sync(args.target, args.uri)
    return clean_stale(args.uri, args.dry_run)
