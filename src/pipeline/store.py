"""Opening one sqlite MLflow store from many processes at once.

MLflow creates a fresh sqlite database's tables on first use; two processes doing that at the
same moment fail (`table ... already exists`), and two creating the experiment race too. A file
lock next to the database serialises that first step; every later write goes through sqlite's
own locking.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

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
