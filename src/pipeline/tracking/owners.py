"""Who writes a run, and finding the runs whose writer died (SIGKILL, OOM killer, power cut).

Every run is tagged with its owner: host, pid and the process's start time. A RUNNING run is
stale when its owner process no longer exists on this host, or when the pid now belongs to a
different process (pids are reused); a run that a live job - a parallel sweep job, another
terminal - is writing right now is never touched. Runs written from another host, or without
owner tags, cannot be judged from here and are only reported.
"""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass
from pathlib import Path

# Lightning's own rank_zero_only (the same object, its rank set by Lightning), from the small
# package that defines it: `scripts/runs.py` then does not load Lightning (seconds).
from lightning_utilities.core.rank_zero import rank_zero_only
from mlflow.entities import Run
from mlflow.tracking import MlflowClient

log = logging.getLogger(__name__)

HOST_TAG, PID_TAG, START_TAG = "owner.host", "owner.pid", "owner.start"
ENDED_BY_TAG = "ended_by"  # "clean-stale" on runs marked by `scripts/runs.py clean-stale`


def process_start(pid: int) -> str:
    """A token that differs between two processes that had the same pid ("" where unknown).

    Linux: boot id plus the start time in clock ticks (field 22 of /proc/<pid>/stat).
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""
    fields = stat[stat.rindex(")") + 2 :].split()  # the command name may contain spaces
    return f"{boot}:{fields[19]}"


def owner_tags() -> dict[str, str]:
    pid = os.getpid()
    return {HOST_TAG: socket.gethostname(), PID_TAG: str(pid), START_TAG: process_start(pid)}


def _pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def owner_alive(tags: dict[str, str]) -> bool | None:
    """True / False for a run owned by a process on this host; None when it cannot be told."""
    if tags.get(HOST_TAG) != socket.gethostname() or not tags.get(PID_TAG, "").isdigit():
        return None
    pid = int(tags[PID_TAG])
    if not _pid_exists(pid):
        return False
    recorded, current = tags.get(START_TAG, ""), process_start(pid)
    return not (recorded and current and recorded != current)  # the pid was reused


@dataclass
class RunningRuns:
    stale: list[Run]  # owner died: safe to mark
    alive: list[Run]  # a live process writes them
    unknown: list[Run]  # another host or no owner tags: left alone


def running_runs(client: MlflowClient, experiment_ids: list[str] | None = None) -> RunningRuns:
    """The RUNNING runs of the given experiments (all by default), sorted by whether they live."""
    if experiment_ids is None:
        experiment_ids = [e.experiment_id for e in client.search_experiments()]
    found = RunningRuns([], [], [])
    if not experiment_ids:
        return found
    runs = client.search_runs(experiment_ids, "attributes.status = 'RUNNING'", max_results=10_000)
    for run in runs:
        alive = owner_alive(run.data.tags)
        {True: found.alive, False: found.stale, None: found.unknown}[alive].append(run)
    return found


def mark_stale(client: MlflowClient, runs: list[Run]) -> None:
    """End each run KILLED: its process is gone, so it will never finish."""
    for run in runs:
        client.set_tag(run.info.run_id, ENDED_BY_TAG, "clean-stale")
        client.set_terminated(run.info.run_id, "KILLED")


@rank_zero_only
def warn_stale(client: MlflowClient, experiment: str) -> None:
    """One warning line at start-up when dead processes left runs RUNNING in this experiment."""
    try:
        experiment_id = client.get_experiment_by_name(experiment).experiment_id
        stale = running_runs(client, [experiment_id]).stale
    except Exception as error:  # a warning must never stop a training run
        log.debug("stale-run check failed: %s", error)
        return
    if stale:
        ids = ", ".join(run.info.run_id for run in stale[:5]) + (" ..." if len(stale) > 5 else "")
        log.warning(
            "%d run(s) were left RUNNING by processes that no longer exist (%s); mark them "
            "KILLED with: python scripts/runs.py clean-stale",
            len(stale),
            ids,
        )
