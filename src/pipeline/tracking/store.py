"""The MLflow store: opening one sqlite store from many processes at once, and its experiment.

MLflow creates a fresh sqlite database's tables on first use; two processes doing that at the
same moment fail (`table ... already exists`), and two creating the experiment race too. A file
lock next to the database serialises that first step; every later write goes through sqlite's
own locking.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import mlflow
from mlflow.tracking import MlflowClient

try:
    import fcntl
except ImportError:  # Windows: no flock; parallel jobs should share a created store there
    fcntl = None


@contextlib.contextmanager
def creation_lock(uri: str) -> Iterator[None]:
    """Hold an exclusive lock on `<db>.lock` for a `sqlite:///` URI; other URIs need none."""
    if fcntl is None or not uri.startswith("sqlite:///"):
        yield
        return
    db = Path(uri.removeprefix("sqlite:///"))
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.with_name(db.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def ensure_experiment(client: MlflowClient, name: str, artifact_root: str | None) -> str:
    """The experiment's id, creating it (artifacts under `artifact_root`) if it does not exist.

    No `artifact_root` (tracking=server): the server's default, so artifacts go through it.
    """
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    location = Path(artifact_root).resolve().as_uri() if artifact_root else None
    try:
        return client.create_experiment(name, artifact_location=location)
    except mlflow.exceptions.MlflowException:  # another process created it first
        return client.get_experiment_by_name(name).experiment_id
