"""A run's writes to the MLflow store, off the training loop, with a local spool for outages.

Training never waits on tracking. `Writer.submit` only queues a record (a batch of metric
points, tags, an artifact, the model, the final status); one background thread sends them in
order. A record the store does not take because it is unavailable - the server down or timing
out, a sqlite store locked by another process - goes to the spool, a JSON-lines file in the
run's output folder (`mlflow-spool.jsonl`), and so does every later record, behind it. The spool
is retried with backoff while the run goes on; the user is told once, on stderr.

At the run's end `Writer.close()` sends what it can, retrying for a bounded time (`LOCK_WAIT_S`
for a locked sqlite store, `DOWN_WAIT_S` for a server that does not answer). What is still not
sent, the final status included, stays in the spool and the run's status in the store is left
as it was; the final message says so and names the command that completes the record:
`python scripts/runs.py sync <output dir>` (`sync()` here). Each record sent is marked in the
spool, so syncing again sends nothing twice (the store also ignores a metric point it has).

The parts: tracking.outage (which failures are retried), tracking.records (the spool file and
how each record is sent), tracking.writer (the thread); here, `sync`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from mlflow.tracking import MlflowClient

from pipeline.tracking import owners

# The spool's parts, under the names its callers use (`spool.Writer`, `spool.SPOOL_NAME`, ...).
from pipeline.tracking.outage import (  # noqa: F401
    DOWN_WAIT_S,
    FAIL_FAST_ENV,
    LOCK_WAIT_S,
    fail_fast,
    reason,
    unavailable,
)
from pipeline.tracking.records import MODEL_NAME, SPOOL_NAME, Spool, describe, send  # noqa: F401
from pipeline.tracking.writer import RETRY_MAX_S, SYNC_HINT, Writer  # noqa: F401


@dataclass
class Synced:
    """What one `sync` did."""

    spool: Path
    sent: list[dict] = field(default_factory=list)
    before: int = 0  # records sent earlier (by the run or an earlier sync)
    left: list[dict] = field(default_factory=list)  # not sent (the store unavailable or refusing)
    errors: list[str] = field(default_factory=list)


def spool_path(target: Path) -> Path:
    target = Path(target)
    return target / SPOOL_NAME if target.is_dir() else target


def sync(
    target: Path, uri: str | None = None, client_for: Callable[[str], MlflowClient] = MlflowClient
) -> Synced:
    """Send a spool's unsent records, in order, to the store each names (or `uri`)."""
    fail_fast()
    spool = Spool(spool_path(target))
    if not spool.path.is_file():
        raise FileNotFoundError(f"no spool at {spool.path}")
    live = [w for w in spool.writers() if owners.owner_alive(w)]
    if live:
        raise RuntimeError(
            f"the process that writes {spool.path} (pid {live[0].get(owners.PID_TAG)}) is still "
            "running; it sends the spool itself, or run sync once it has ended"
        )
    result = Synced(spool.path)
    clients: dict[str, MlflowClient] = {}
    with spool.locked():
        records = spool.pending()
        result.before = sum("op" in line for line in spool.read()) - len(records)
        for index, record in enumerate(records):
            store = uri or record["uri"]
            client = clients.get(store) or clients.setdefault(store, client_for(store))
            try:
                send(client, record)
            except Exception as error:
                what = f"{describe([record])} (record {record['seq']})"
                result.errors.append(f"{what}: {reason(error)}")
                if unavailable(error):  # the rest waits: it goes in order
                    result.left += records[index:]
                    break
                result.left.append(record)
                continue
            spool.mark_sent(record["seq"])
            result.sent.append(record)
    return result
