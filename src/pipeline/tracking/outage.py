"""When the MLflow store is away: which failures are worth retrying, and in how few words.

A write that fails because the store is down, timing out, busy or locked may work later
(`unavailable`); the run's writer (tracking.writer) keeps such records in the spool and retries
them. MLflow's own client is made to give up fast (`fail_fast`), so that the writer decides.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import TypeVar

from mlflow.exceptions import MlflowException

from pipeline.errors import no_space

LOCK_WAIT_S = 300.0  # at a run's end: how long to retry a sqlite store locked by another process
DOWN_WAIT_S = 10.0  # ... a store that does not answer (server down, connection refused, timeouts)

# MLflow's HTTP client retries a request 7 times with backoff (minutes) before it gives up, and
# urllib3 logs a warning per retry. The writer retries on its own, without blocking training.
T = TypeVar("T")

FAIL_FAST_ENV = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
}


def fail_fast() -> None:
    """MLflow's client gives up on an unavailable store in seconds, and quietly: the error is
    raised all the same (values already set in the environment win)."""
    for key, value in FAIL_FAST_ENV.items():
        os.environ.setdefault(key, value)
    logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)  # "Retrying (...)"
    # A locked sqlite store: MLflow logs each failed statement with its traceback, then raises.
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)


def unavailable(error: BaseException) -> bool:
    """The store could not take a write now but may later: down, timing out, busy or locked."""
    if no_space(error) is not None:
        return False  # a full disk is the run's failure (DiskFull), not an outage to wait out
    text = str(error)
    if "database is locked" in text or "database is busy" in text:
        return True
    if isinstance(error, FileNotFoundError | IsADirectoryError | PermissionError):
        return False  # a local file that is missing: trying again does not help
    if isinstance(error, OSError | TimeoutError):  # requests' and urllib3's errors are OSErrors
        return True
    if isinstance(error, MlflowException):  # transport errors come as INTERNAL_ERROR (500)
        code = error.get_http_status_code()
        return code >= 500 or code == 429
    return type(error).__name__ == "OperationalError"  # sqlalchemy's, e.g. a busy sqlite file


def reason(error: BaseException) -> str:
    """The cause of a failed write in a few words."""
    if (full := no_space(error)) is not None:
        return f"no space left: {full}"
    text = str(error)
    for known in ("database is locked", "Connection refused", "timed out", "Connection reset"):
        if known.lower() in text.lower():
            return known.lower()
    return f"{type(error).__name__}: {text.splitlines()[0] if text else ''}"[:200]


def retrying(action: Callable[[], T]) -> T:
    """`action()`, retried while the store is `unavailable`: up to `LOCK_WAIT_S` for a locked
    sqlite store, `DOWN_WAIT_S` for one that does not answer; then (or at once, for any other
    failure) its error is raised. A sweep's parent and a run writer's last sends both use it."""
    start, pause = time.monotonic(), 0.5
    while True:
        try:
            return action()
        except Exception as error:
            wait_s = LOCK_WAIT_S if "database is locked" in str(error) else DOWN_WAIT_S
            if not unavailable(error) or time.monotonic() - start + pause > wait_s:
                raise
            time.sleep(pause)
            pause = min(2 * pause, 5.0)
