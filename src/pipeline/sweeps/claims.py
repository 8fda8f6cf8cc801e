"""One job, one run: any number of processes running the same sweep (two terminals, two SLURM
jobs) share its jobs and its parent run.

- `job_claim`: a job runs only in the process that holds its claim, an exclusive lock keyed by
  the parent run and the job's key (sweeps.common.job_key), taken without waiting and held until
  the job's run has ended. A process that finds it held skips the job with one line; one that
  gets it after the job ended finds the job's run and does not run it again (sweeps.jobs).
- `Membership`: every process of the sweep holds a shared lock on the parent's key from the
  moment it has the parent until its own jobs are done. Then it lets go and asks for the lock
  exclusively, without waiting: only the process that gets it (no other is still running jobs
  of the sweep) counts the children and ends the parent; the others leave it to that one. Two
  that finish at once: one of them gets it.

The locks are fcntl locks on files in a folder every process of the sweep sees: next to a
sqlite store (`<db>.claims/`; shared by SLURM jobs with the store), else this host's temporary
folder (a server store: processes on one host; across hosts a job's run refuses a second live
writer, sweeps.jobs). A lock goes with its process, so a SIGKILLed worker never holds a job.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

try:
    import fcntl
except ImportError:  # Windows: no flock; each process runs the sweep as if alone
    fcntl = None  # type: ignore[assignment]


def lock_folder(uri: str) -> Path:
    """Where a sweep's locks live: next to a sqlite store, else this host's temp folder."""
    from pipeline.tracking.store import sqlite_path

    db = sqlite_path(uri)
    folder = (
        db.with_name(db.name + ".claims")
        if db is not None
        else Path(tempfile.gettempdir()) / f"pipeline-sweep-claims-{os.getuid()}"
    )
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _file(uri: str, *parts: str) -> Path:
    name = hashlib.sha256("\n".join(parts).encode()).hexdigest()[:24]
    return lock_folder(uri) / f"{name}.lock"


def _me() -> str:
    return f"pid {os.getpid()} on {socket.gethostname()}"


@contextlib.contextmanager
def job_claim(uri: str, parent_id: str, key: str) -> Iterator[str | None]:
    """Holds the job's claim for the block and yields None; yields who holds it (e.g.
    "pid 12 on node3") when another process does, then nothing is held."""
    if fcntl is None:
        yield None
        return
    with open(_file(uri, "job", parent_id, key), "a+") as file:
        try:
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            file.seek(0)
            yield file.read().strip() or "another process"
            return
        file.seek(0)
        file.truncate()
        file.write(_me())
        file.flush()
        try:
            yield None
        finally:
            fcntl.flock(file, fcntl.LOCK_UN)


class Membership:
    """This process's share in a sweep: `join` once it has the parent, `last` when its jobs
    are done (True: no other process still runs the sweep, so this one ends the parent)."""

    def __init__(self, uri: str, parent_id: str) -> None:
        self.path = _file(uri, "sweep", parent_id)
        self.file: IO[str] | None = None
        self.ending: IO[str] | None = None

    def join(self) -> None:
        if fcntl is None:
            return
        self.file = open(self.path, "a+")  # noqa: SIM115 - held until `last`
        fcntl.flock(self.file, fcntl.LOCK_SH)  # waits only while another process ends it

    def last(self) -> bool:
        if self.file is None:
            return True
        file, self.file = self.file, None
        try:
            fcntl.flock(file, fcntl.LOCK_UN)
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            file.close()
            return False
        self.ending = file  # held (exclusive) until `release`: a late joiner waits for the end
        return True

    def release(self) -> None:
        ending, self.ending = self.ending, None
        if ending is not None:
            fcntl.flock(ending, fcntl.LOCK_UN)
            ending.close()


@contextlib.contextmanager
def reserved_names(uri: str, parent_id: str) -> Iterator[set[str]]:
    """The report names reserved on the parent so far, under an exclusive lock for the block;
    names added to the set stay reserved. Two `compare.py` at once never pick the same name,
    even before either has uploaded its report (a name reserved by a crashed one is skipped)."""
    path = _file(uri, "reports", parent_id)
    with open(path, "a+") as file:
        if fcntl is not None:
            fcntl.flock(file, fcntl.LOCK_EX)
        file.seek(0)
        names = {line.strip() for line in file if line.strip()}
        before = set(names)
        yield names
        file.writelines(f"{name}\n" for name in sorted(names - before))
        file.flush()
