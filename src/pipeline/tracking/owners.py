"""Who writes a run, and finding the runs whose writer died (SIGKILL, OOM killer, power cut).

Every run is tagged with its owner: host, pid and the process's start time. A RUNNING run is
stale when its owner process no longer exists on this host, or when the pid now belongs to a
different process (pids are reused); a run that a live job - a parallel sweep job, another
terminal - is writing right now is never touched. Runs written from another host, or without
owner tags, cannot be judged from here and are only reported.

While it trains, the writer holds an exclusive lock on the run (`writer_lock`: a file lock on
this host, released by the kernel when the process dies, however it dies), so two processes on
one host can never write one run; and it refreshes the run's `owner.heartbeat` tag, by which a
writer on another host is told from a dead one (`writer_state`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

# Lightning's own rank_zero_only (the same object, its rank set by Lightning), from the small
# package that defines it: `scripts/runs.py` then does not load Lightning (seconds).
from lightning_utilities.core.rank_zero import rank_zero_only
from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from pipeline.errors import RunBusy

log = logging.getLogger(__name__)

HOST_TAG, PID_TAG, START_TAG = "owner.host", "owner.pid", "owner.start"
HEARTBEAT_TAG = "owner.heartbeat"  # unix time of the writer's last sign of life
HEARTBEAT_EVERY_S = 60.0
# A heartbeat older than this says the writer is gone (a live one refreshes it every minute).
HEARTBEAT_STALE_S = 5 * HEARTBEAT_EVERY_S
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
    """End each run KILLED: its process is gone, so it will never finish. A model it was
    logging when it died (MLflow's logged model, left PENDING) is marked FAILED too."""
    from mlflow.entities import LoggedModelStatus

    for run in runs:
        run_id = run.info.run_id
        models = client.search_logged_models(
            [run.info.experiment_id], filter_string=f"source_run_id = '{run_id}'"
        )
        for model in models:
            if model.status == LoggedModelStatus.PENDING:
                client.finalize_logged_model(model.model_id, LoggedModelStatus.FAILED)
        client.set_tag(run_id, ENDED_BY_TAG, "clean-stale")
        client.set_terminated(run_id, "KILLED")


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


def _lock_path(run_id: str) -> Path:
    folder = Path(tempfile.gettempdir()) / f"pipeline-run-locks-{os.getuid()}"
    folder.mkdir(mode=0o700, exist_ok=True)
    return folder / f"{run_id}.lock"


@contextlib.contextmanager
def writer_lock(run_id: str, what: str) -> Iterator[None]:
    """Hold the run's writer lock on this host for the block; RunBusy if another process has it.

    fcntl's lock is the process's: it goes when the process exits or dies, so a SIGKILLed writer
    never leaves a run locked. DDP ranks > 0 write nothing and take no lock; where fcntl is
    missing (not Linux/macOS), none is taken either.
    """
    try:
        import fcntl
    except ImportError:
        fcntl = None
    if fcntl is None or rank_zero_only.rank > 0:
        yield
        return
    with open(_lock_path(run_id), "a+") as file:
        try:
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = ""
            for _ in range(20):  # the holder writes its name just after taking the lock
                file.seek(0)
                holder = file.read().strip()
                if holder:
                    break
                time.sleep(0.05)
            holder = holder or "another process"
            raise RunBusy(
                f"{what}: the run is being written right now by {holder}; stop that process "
                "first (its run then ends KILLED)"
            ) from None
        file.seek(0)
        file.truncate()
        file.write(f"pid {os.getpid()} on {socket.gethostname()}")
        file.flush()
        try:
            yield
        finally:
            fcntl.flock(file, fcntl.LOCK_UN)


def writer_state(tags: dict[str, str], now: float | None = None) -> str:
    """How a RUNNING run's writer stands, from its tags: "alive", "dead" or "unknown".

    On this host the process table says (pid and start time); elsewhere the heartbeat does:
    fresh means alive, stale means dead, none (an older run) means it cannot be told.
    """
    local = owner_alive(tags)
    if local is not None:
        return "alive" if local else "dead"
    try:
        beat = float(tags[HEARTBEAT_TAG])
    except (KeyError, ValueError):
        return "unknown"
    age = (time.time() if now is None else now) - beat
    return "alive" if age < HEARTBEAT_STALE_S else "dead"


class Heartbeat:
    """Refreshes the run's heartbeat tag every HEARTBEAT_EVERY_S from a daemon thread while the
    block runs (rank 0 only); a failed refresh is skipped, never fatal to training."""

    def __init__(self, client: MlflowClient, run_id: str, every_s: float = HEARTBEAT_EVERY_S):
        self.client, self.run_id, self.every_s = client, run_id, every_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def beat(self) -> None:
        try:
            self.client.set_tag(self.run_id, HEARTBEAT_TAG, f"{time.time():.0f}")
        except Exception as error:  # the store may be busy or away: training goes on
            log.debug("heartbeat of run %s failed: %s", self.run_id, error)

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            self.beat()

    def __enter__(self) -> Heartbeat:
        if rank_zero_only.rank == 0:
            self.beat()
            self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
