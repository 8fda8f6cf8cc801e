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

Where the locks are, so that every process of the sweep sees them: fcntl locks on files next to
a sqlite store (`<db>.claims/`, on the file system SLURM jobs share with the store); with a
server store, PostgreSQL advisory locks in Optuna's database when `tracking.optuna_storage` is
PostgreSQL (`tracking=server`: every host reaches it), else files in this host's temporary
folder (processes on one host). A lock goes with its process (a file lock with the process, an
advisory lock with its connection), so a SIGKILLed worker never holds a job.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # Windows: no flock; each process runs the sweep as if alone
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)


def lock_folder(uri: str) -> Path:
    """Where a sweep's lock files live: next to a sqlite store, else this host's temp folder."""
    from pipeline.tracking.store import sqlite_path

    db = sqlite_path(uri)
    folder = (
        db.with_name(db.name + ".claims")
        if db is not None
        else Path(tempfile.gettempdir()) / f"pipeline-sweep-claims-{os.getuid()}"
    )
    folder.mkdir(parents=True, exist_ok=True)
    return folder


class _FileLock:
    """An fcntl lock on a file named by the key; it says which process holds it."""

    def __init__(self, uri: str, key: str) -> None:
        name = hashlib.sha256(key.encode()).hexdigest()[:24]
        self.file = open(lock_folder(uri) / f"{name}.lock", "a+")  # noqa: SIM115 - closed by let_go()

    def exclusive(self) -> bool:
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        self.file.seek(0)
        self.file.truncate()
        self.file.write(f"pid {os.getpid()} on {socket.gethostname()}")
        self.file.flush()
        return True

    def shared(self) -> None:
        fcntl.flock(self.file, fcntl.LOCK_SH)

    def unlock(self) -> None:
        fcntl.flock(self.file, fcntl.LOCK_UN)

    def holder(self) -> str:
        self.file.seek(0)
        return self.file.read().strip() or "another process"

    def let_go(self) -> None:
        """Unlocked, then closed: a forked child (a DataLoader worker) that shares the open
        file would keep a lock that is only closed."""
        with contextlib.suppress(OSError):
            fcntl.flock(self.file, fcntl.LOCK_UN)
        self.file.close()


class _PgLock:
    """A PostgreSQL advisory lock on a connection of its own (autocommit: never idle in a
    transaction), so that workers on every host that reaches the database see it."""

    def __init__(self, url: str, key: str) -> None:
        import sqlalchemy

        digest = hashlib.sha256(key.encode()).digest()
        self.key = int.from_bytes(digest[:8], "big", signed=True)
        engine = sqlalchemy.create_engine(
            url, poolclass=sqlalchemy.pool.NullPool, isolation_level="AUTOCOMMIT"
        )
        self.connection = engine.connect()

    def _call(self, function: str) -> Any:
        import sqlalchemy

        query = sqlalchemy.text(f"SELECT {function}(:key)")
        return self.connection.execute(query, {"key": self.key}).scalar()

    def exclusive(self) -> bool:
        return bool(self._call("pg_try_advisory_lock"))

    def shared(self) -> None:
        self._call("pg_advisory_lock_shared")

    def unlock(self) -> None:  # this connection holds this one key only
        import sqlalchemy

        self.connection.execute(sqlalchemy.text("SELECT pg_advisory_unlock_all()"))

    def holder(self) -> str:
        return "another worker (its PostgreSQL advisory lock is held)"

    def let_go(self) -> None:
        with contextlib.suppress(Exception):  # a lost connection took its locks with it
            self.connection.close()


def _lock(uri: str, storage: str | None, *parts: str) -> _FileLock | _PgLock | None:
    key = "\n".join(("pipeline-sweep", *parts))
    if not str(uri).startswith("sqlite:") and str(storage or "").startswith("postgresql"):
        try:
            return _PgLock(str(storage), key)
        except Exception as error:  # unreachable: the sweep still runs, shared on this host
            first = (str(error).strip() or type(error).__name__).splitlines()[0][:200]
            log.warning("Sweep: no lock in tracking.optuna_storage (%s); jobs are shared "
                        "only with processes on this host", first)  # fmt: skip
    return None if fcntl is None else _FileLock(str(uri), key)


@contextlib.contextmanager
def job_claim(
    uri: str, parent_id: str, key: str, storage: str | None = None
) -> Iterator[str | None]:
    """Holds the job's claim for the block and yields None; yields who holds it (e.g.
    "pid 12 on node3") when another process does, then nothing is held."""
    lock = _lock(uri, storage, "job", parent_id, key)
    if lock is None:
        yield None
        return
    try:
        if not lock.exclusive():
            yield lock.holder()
            return
        yield None
    finally:
        lock.let_go()


class Membership:
    """This process's share in a sweep: `join` once it has the parent, `last` when its jobs
    are done (True: no other process still runs the sweep, so this one ends the parent, then
    calls `release`)."""

    def __init__(self, uri: str, parent_id: str, storage: str | None = None) -> None:
        self.lock = _lock(uri, storage, "sweep", parent_id)

    def join(self) -> None:
        if self.lock is not None:
            self.lock.shared()  # waits only while another process ends the parent

    def last(self) -> bool:
        if self.lock is None:
            return True
        try:
            self.lock.unlock()
            if self.lock.exclusive():
                return True  # held until `release`: a late joiner waits for the end
        except Exception as error:  # the lock's database went away: end it, as if alone
            log.warning("Sweep: its lock was lost (%s); this process ends the parent", error)
            return True
        self.release()
        return False

    def release(self) -> None:
        lock, self.lock = self.lock, None
        if lock is not None:
            lock.let_go()


@contextlib.contextmanager
def reserved_names(uri: str, parent_id: str) -> Iterator[set[str]]:
    """The report names reserved on the parent so far, under an exclusive lock for the block;
    names added to the set stay reserved. Two `compare.py` at once never pick the same name,
    even before either has uploaded its report (a name reserved by a crashed one is skipped).
    Next to a sqlite store; with a server store, on this host."""
    folder = lock_folder(uri)
    name = hashlib.sha256(f"reports\n{parent_id}".encode()).hexdigest()[:24]
    with open(folder / f"{name}.names", "a+") as file:
        if fcntl is not None:
            fcntl.flock(file, fcntl.LOCK_EX)
        file.seek(0)
        names = {line.strip() for line in file if line.strip()}
        before = set(names)
        yield names
        file.writelines(f"{name}\n" for name in sorted(names - before))
        file.flush()


def hand_over(client: Any, parent_id: str) -> None:
    """This process leaves a parent that others still run: if it is the parent's recorded
    owner, its pid is taken off, so that the parent is not judged stale (warned about, marked
    KILLED by clean-stale) while they run; the last of them ends it."""
    from pipeline.tracking import owners

    try:
        tags = client.get_run(parent_id).data.tags
        if owners.owner_tags().items() <= tags.items():
            for tag in (owners.PID_TAG, owners.START_TAG):
                client.delete_tag(parent_id, tag)
    except Exception as error:  # never fatal: at worst a stale-run warning
        log.debug("Sweep: could not hand over parent %s: %s", parent_id, error)
