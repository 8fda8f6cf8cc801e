"""The MLflow store: one sqlite store opened by many processes at once, made whole or not at all.

MLflow creates a fresh sqlite database's tables on first use, in about a hundred steps that are
not one transaction: a process killed midway leaves a half-made store that every later command
fails on (`table ... already exists`), and two processes doing it at once fail too. So
`open_store` builds a new store aside (`.mlflow.db.new-<pid>`, in the same folder) and moves it
into place with one `os.replace`, under a file lock next to the database (`mlflow.db.lock`);
every later write goes through sqlite's own locking and journal. A store of an older MLflow is
copied to `mlflow.db.bak-<time>` and upgraded aside the same way. `check_sqlite` (run with the
other checks of the input, on every command) refuses a damaged store with the command that moves
it aside.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shlex
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.errors import StoreError
from pipeline.tracking import mlflow_internals

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

try:
    import fcntl
except ImportError:  # Windows: no flock; parallel jobs should share a created store there
    fcntl = None

SQLITE = "sqlite:///"
HEADER = b"SQLite format 3\x00"
# Every MLflow schema has these; a store with some of its tables but not these is half made.
CORE_TABLES = {"alembic_version", "experiments", "runs", "metrics", "params", "tags"}
QUICK_CHECK_BYTES = 16 * 2**20  # sqlite's quick_check reads the whole file: ~2.5 ms per MiB
BUILDING = ".{name}.new-"  # a store being built or upgraded aside: .mlflow.db.new-<pid>


def sqlite_path(uri: str) -> Path | None:
    return Path(uri.removeprefix(SQLITE)) if uri.startswith(SQLITE) else None


def _broken(db: Path, what: str) -> StoreError:
    aside = shlex.quote(f"{db}.broken")
    return StoreError(
        f"the MLflow store {db} {what}; move it aside and a new store is made on the next run: "
        f"mv {shlex.quote(str(db))} {aside}"
    )


@contextlib.contextmanager
def creation_lock(uri: str) -> Iterator[None]:
    """Hold an exclusive lock on `<db>.lock` for a `sqlite:///` URI; other URIs need none."""
    db = sqlite_path(uri)
    if fcntl is None or db is None:
        yield
        return
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.with_name(db.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _schema(db: Path) -> tuple[set[str], str | None]:
    """(the store's table names, its alembic revision), after sqlite's quick_check on a small
    store. Opened for writing: a journal left by a killed writer is rolled back, as any open
    does. Raises StoreError for a file that is not a healthy sqlite database."""
    with open(db, "rb") as file:
        header = file.read(len(HEADER))
    if header != HEADER:
        raise _broken(db, "is not an SQLite database (its first bytes are not sqlite's)")
    try:
        connection = sqlite3.connect(db, timeout=60)
        try:
            if db.stat().st_size <= QUICK_CHECK_BYTES:
                (result,) = connection.execute("PRAGMA quick_check(1)").fetchone()
                if result != "ok":
                    raise _broken(db, f"is damaged (sqlite's quick_check: {result})")
            query = "SELECT name FROM sqlite_master WHERE type = 'table'"
            tables = {name for (name,) in connection.execute(query)}
            revision = None
            if "alembic_version" in tables:
                row = connection.execute("SELECT version_num FROM alembic_version").fetchone()
                revision = row[0] if row else None
        finally:
            connection.close()
    except sqlite3.OperationalError as error:  # e.g. locked for longer than the timeout
        raise StoreError(f"the MLflow store {db} cannot be read now ({error}); try again") from None
    except sqlite3.DatabaseError as error:  # "file is not a database", "malformed"
        raise _broken(db, f"is damaged (sqlite: {error})") from None
    return tables, revision


def _inspect(db: Path) -> tuple[set[str], str] | None:
    """(tables, revision) of a store with MLflow's tables, None where there is no store yet (no
    file, an empty one, or no table: open_store makes it). Raises StoreError for a broken one."""
    if not db.is_file() or db.stat().st_size == 0:
        return None
    tables, revision = _schema(db)
    if not tables - {"alembic_version"}:
        return None
    if revision is None or not CORE_TABLES <= tables:
        raise _broken(db, "holds only part of MLflow's tables (its creation was stopped midway)")
    return tables, revision


def check_sqlite(db: Path) -> None:
    """Refuse a store that is not sqlite, is damaged, or holds only part of MLflow's tables
    (a first run killed while MLflow created them). Cheap: no MLflow, one sqlite read."""
    _inspect(db)


def open_store(uri: str) -> MlflowClient:
    """A client of the store at `uri`; a sqlite store is created or upgraded first (see the
    module doc). Raises StoreError for a store that cannot be used."""
    from mlflow.tracking import MlflowClient

    db = sqlite_path(uri)
    if db is not None:
        with creation_lock(uri):
            _prepare(db.resolve())
    return MlflowClient(uri)


def open_existing(uri: str, what: str) -> MlflowClient:
    """A client of a store that must exist already (a resume reads a run from it): nothing is
    created or upgraded, unlike `open_store`. Raises StoreError for a missing, broken or older
    sqlite store."""
    from mlflow.tracking import MlflowClient

    db = sqlite_path(uri)
    if db is not None:
        schema = _inspect(db.resolve())  # reads only: no file, folder or table is made
        if schema is None:
            raise StoreError(
                f"{what}: there is no MLflow store at {db}; point tracking.uri at the store "
                "that holds the run"
            )
        revision, head = schema[1], _head_revision()
        if revision != head:
            raise StoreError(
                f"{what}: the MLflow store {db} has an older schema ({revision}) than this "
                f"MLflow ({head}); a new training run on it upgrades it first (keeping a backup)"
            )
    return MlflowClient(uri)


def _prepare(db: Path) -> None:
    """Under the creation lock: build a missing store, upgrade an old one, refuse a broken one."""
    for stale in db.parent.glob(BUILDING.format(name=db.name) + "*"):
        stale.unlink(missing_ok=True)  # left by a killed build: nobody else builds now
    schema = _inspect(db)
    if schema is None:
        _build(db)
        return
    tables, revision = schema
    head = _head_revision()
    if revision != head:
        _upgrade(db, revision, head)
    elif not mlflow_internals.orm_tables() <= tables:
        raise _broken(db, f"lacks some of MLflow's tables at its schema {revision}")


@functools.cache
def _head_revision() -> str:
    """The schema revision of the installed MLflow (what MLflow itself compares against)."""
    return mlflow_internals.latest_schema_revision()


def _aside(db: Path) -> Path:
    return db.with_name(BUILDING.format(name=db.name) + str(os.getpid()))


def _build(db: Path) -> None:
    """MLflow creates its tables and Default experiment in a file aside, which then replaces
    `db` (missing, empty, or with no table) in one step."""
    from mlflow.tracking import MlflowClient

    work = _aside(db)
    uri = f"{SQLITE}{work}"
    MlflowClient(uri).search_experiments()
    # Its connections are closed before the file moves; should MLflow's cache change, an open
    # connection to the moved file is harmless on POSIX (the contract test tells).
    with contextlib.suppress(Exception):
        mlflow_internals.dispose_engine(uri)
    _move(work, db)


def _upgrade(db: Path, revision: str, head: str) -> None:
    """Back the store up, upgrade a copy with `mlflow db upgrade`, move the copy into place."""
    import mlflow

    backup = db.with_name(f"{db.name}.bak-{time.strftime('%Y%m%d-%H%M%S')}")
    print(
        f"The MLflow store {db} has an older schema ({revision}) than MLflow {mlflow.__version__}"
        f" ({head}): upgrading it; the old store is kept as {backup}",
        flush=True,
    )
    work = _aside(db)
    _copy(db, work)
    _move(work, backup)
    shutil.copyfile(backup, work)
    upgrade = subprocess.run(
        [sys.executable, "-m", "mlflow", "db", "upgrade", f"{SQLITE}{work}"],
        capture_output=True,
        text=True,
    )
    if upgrade.returncode != 0:
        work.unlink(missing_ok=True)
        backup.unlink(missing_ok=True)  # the store itself is unchanged
        last = (upgrade.stderr.strip().splitlines() or ["no message"])[-1]
        raise _broken(db, f"cannot be upgraded from schema {revision} to {head} ({last})")
    _move(work, db)


def _copy(source: Path, target: Path) -> None:
    """A consistent copy of a sqlite database, even while another process writes to it."""
    with contextlib.closing(sqlite3.connect(source, timeout=60)) as src:
        with contextlib.closing(sqlite3.connect(target)) as dst:
            src.backup(dst)


def _move(source: Path, target: Path) -> None:
    """Replace `target` by `source` in one step, durable once this returns."""
    os.replace(source, target)
    with contextlib.suppress(OSError):  # the rename itself survives a power cut
        folder = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)


def ensure_experiment(client: MlflowClient, name: str, artifact_root: str | None) -> str:
    """The experiment's id, creating it (artifacts under `artifact_root`) if it does not exist.

    No `artifact_root` (tracking=server): the server's default, so artifacts go through it.
    """
    import mlflow

    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    location = Path(artifact_root).resolve().as_uri() if artifact_root else None
    try:
        return client.create_experiment(name, artifact_location=location)
    except mlflow.exceptions.MlflowException:  # another process created it first
        return client.get_experiment_by_name(name).experiment_id


def unwritable(folder: Path) -> str | None:
    """Why files cannot be created in `folder` (None if they can); a real write, not os.access,
    which says yes to root and no to nothing on a read-only mount."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-check-"):
            pass
    except OSError as error:
        return f"the store folder {folder} cannot be created or written ({error.strerror})"
    return None


def see_it(uri: str) -> str:
    """How to look at the runs in the store at `uri`: one line."""
    if uri.startswith(("http://", "https://")):
        return f"See it: {uri}"  # the tracking server serves the UI too
    return f"See it: make ui   (or: mlflow ui --backend-store-uri {uri})"
