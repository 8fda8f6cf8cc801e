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
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from pipeline.tracking import owners

SPOOL_NAME = "mlflow-spool.jsonl"
MODEL_NAME = "mlflow-model.pt"  # the model to log, until the store has taken it
LOCK_WAIT_S = 300.0  # at a run's end: how long to retry a sqlite store locked by another process
DOWN_WAIT_S = 10.0  # ... a store that does not answer (server down, connection refused, timeouts)
RETRY_MAX_S = 30.0  # the longest pause between two retries while the run goes on
SYNC_HINT = "python scripts/runs.py sync"

# MLflow's HTTP client retries a request 7 times with backoff (minutes) before it gives up, and
# urllib3 logs a warning per retry. The writer retries on its own, without blocking training.
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
    text = str(error)
    for known in ("database is locked", "Connection refused", "timed out", "Connection reset"):
        if known.lower() in text.lower():
            return known.lower()
    return f"{type(error).__name__}: {text.splitlines()[0] if text else ''}"[:200]


def describe(records: list[dict]) -> str:
    """'3 metric batches (120 points), 2 artifacts, the final status FINISHED'."""
    parts = []
    metrics = [r for r in records if r["op"] == "metrics"]
    if metrics:
        points = sum(len(r["points"]) for r in metrics)
        parts.append(f"{len(metrics)} metric batch(es) ({points} points)")
    for op, name in (("tags", "tag set(s)"), ("artifact", "artifact(s)"), ("text", "text file(s)")):
        if count := sum(r["op"] == op for r in records):
            parts.append(f"{count} {name}")
    if any(r["op"] == "model" for r in records):
        parts.append("the model")
    parts += [f"the final status {r['status']}" for r in records if r["op"] == "status"]
    return ", ".join(parts) or "nothing"


def send(client: MlflowClient, record: dict) -> None:
    """Write one record to the store (raises what the store raises)."""
    run_id, op = record["run_id"], record["op"]
    if op == "metrics":
        metrics = [Metric(key, value, ts, step) for key, value, ts, step in record["points"]]
        client.log_batch(run_id, metrics=metrics, synchronous=True)
    elif op == "tags":
        tags = [RunTag(key, value) for key, value in record["tags"].items()]
        client.log_batch(run_id, tags=tags, synchronous=True)
    elif op == "artifact":
        if not Path(record["path"]).is_file():
            raise FileNotFoundError(f"{record['path']} is gone")
        client.log_artifact(run_id, record["path"], record.get("dir"))
    elif op == "text":
        client.log_text(run_id, record["text"], record["file"])
    elif op == "model":
        import torch

        from pipeline.tracking import models

        saved = torch.load(record["path"], weights_only=False)
        models.log_model(client.tracking_uri, run_id, saved["net"], saved["example"])
        Path(record["path"]).unlink(missing_ok=True)
    elif op == "status":
        client.set_terminated(run_id, record["status"], end_time=record["end_time"])
    else:
        raise ValueError(f"unknown spool record {op!r}")


class Spool:
    """The JSON-lines file: records (`seq`, `op`, ...), `{"sent": seq}` marks, writer lines."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.next_seq: int | None = None

    def _append(self, line: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as file:
            file.write(json.dumps(line) + "\n")
            file.flush()
            os.fsync(file.fileno())

    def add(self, record: dict) -> None:
        if self.next_seq is None:
            lines = self.read() if self.path.exists() else []
            self.next_seq = 1 + max((line.get("seq", 0) for line in lines), default=0)
            self._append({"writer": owners.owner_tags()})  # sync refuses while it lives
        record["seq"], self.next_seq = self.next_seq, self.next_seq + 1
        self._append(record)

    def mark_sent(self, seq: int) -> None:
        self._append({"sent": seq})

    def read(self) -> list[dict]:
        lines = []
        for line in self.path.read_text().splitlines():
            with contextlib.suppress(json.JSONDecodeError):  # a line cut short by a crash
                lines.append(json.loads(line))
        return lines

    def pending(self) -> list[dict]:
        """The records not marked sent, in order."""
        lines = self.read()
        sent = {line["sent"] for line in lines if "sent" in line}
        return [line for line in lines if "op" in line and line["seq"] not in sent]

    def writers(self) -> list[dict]:
        return [line["writer"] for line in self.read() if "writer" in line]

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """One sync at a time."""
        import fcntl  # POSIX; the spool is written without it

        with self.path.open("a") as file:
            fcntl.flock(file, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(file, fcntl.LOCK_UN)


_STOP = object()


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class Writer:
    """One run's writes, sent by a background thread in order; what fails waits in the spool."""

    def __init__(self, client: MlflowClient, run_id: str, spool_path: Path) -> None:
        self.client, self.run_id = client, run_id
        self.uri = str(client.tracking_uri)
        self.spool = Spool(spool_path)
        self.queue: queue.SimpleQueue = queue.SimpleQueue()
        self.unsent: list[dict] = []  # in the spool, not sent yet, in order
        self.refused: list[dict] = []  # the store rejected them (not an outage); kept in the spool
        self.error: BaseException | None = None  # the last failure
        self.delay, self.retry_at = 1.0, 0.0
        self.warned = self.told_back = self.closed = False
        self.thread = threading.Thread(target=self._loop, name="mlflow-writer", daemon=True)
        self.thread.start()

    # What the run records; each call only queues.
    def submit(self, op: str, **fields: Any) -> None:
        if self.closed:
            raise RuntimeError("the writer is closed")
        self.queue.put({"op": op, "run_id": self.run_id, "uri": self.uri, **fields})

    def log_metrics(self, points: list[tuple[str, float, int, int]]) -> None:
        self.submit("metrics", points=points)

    def set_tags(self, tags: dict[str, str]) -> None:
        self.submit("tags", tags=dict(tags))

    def log_artifact(self, path: Path | str, artifact_dir: str | None = None) -> None:
        self.submit("artifact", path=str(Path(path).resolve()), dir=artifact_dir)

    def log_text(self, text: str, artifact_file: str) -> None:
        self.submit("text", text=text, file=artifact_file)

    def log_model(self, net: Any, example: Any) -> None:
        """The model (`models.log_model`), saved next to the spool until the store has it."""
        import torch

        path = self.spool.path.with_name(MODEL_NAME)
        torch.save({"net": net.cpu().eval(), "example": example.cpu()}, path)
        self.submit("model", path=str(path.resolve()))

    def set_status(self, status: str) -> None:
        self.submit("status", status=str(status), end_time=int(time.time() * 1000))

    # The thread.
    def _loop(self) -> None:
        try:
            self._serve()
        except Exception as error:  # the spool itself cannot be written (disk full, read-only)
            _say(f"error: the MLflow writer of run {self.run_id} stopped: {error!r}")

    def _serve(self) -> None:
        while True:
            timeout = max(0.0, self.retry_at - time.monotonic()) if self.unsent else None
            try:
                record = self.queue.get(timeout=timeout)
            except queue.Empty:
                record = None
            if record is _STOP:
                return
            if isinstance(record, threading.Event):  # drain(): everything before it is done
                record.set()
            elif record is not None:
                self._take(record)
            if self.unsent and time.monotonic() >= self.retry_at:
                self._replay()

    def _take(self, record: dict) -> None:
        if self.unsent:  # behind the ones waiting: keeps the order
            self._keep(record)
            return
        try:
            send(self.client, record)
        except Exception as error:
            self.spool.add(record)
            if unavailable(error):
                self.unsent.append(record)
                self._down(error)
            else:
                self._refuse(record, error)

    def _keep(self, record: dict) -> None:
        self.spool.add(record)
        self.unsent.append(record)

    def _down(self, error: BaseException) -> None:
        self.error = error
        self.retry_at = time.monotonic() + self.delay
        self.delay = min(2 * self.delay, RETRY_MAX_S)
        if not self.warned:
            self.warned = True
            _say(
                f"warning: the MLflow store {self.uri} does not take writes ({reason(error)}); "
                f"training goes on, what it cannot take is kept in {self.spool.path} and retried; "
                f"anything left at the end: {SYNC_HINT} {self.spool.path.parent}"
            )

    def _refuse(self, record: dict, error: BaseException) -> None:
        self.refused.append(record)
        _say(
            f"warning: the MLflow store refused {describe([record])} of run {self.run_id}: "
            f"{reason(error)}; kept in {self.spool.path}"
        )

    def _replay(self) -> bool:
        """Send the spool's records in order; False if the store is still unavailable."""
        while self.unsent:
            record = self.unsent[0]
            try:
                send(self.client, record)
            except Exception as error:
                if unavailable(error):
                    self._down(error)
                    return False
                self._refuse(self.unsent.pop(0), error)
                continue
            self.spool.mark_sent(record["seq"])
            self.unsent.pop(0)
        if self.error is not None and not self.told_back:  # once, like the warning
            _say(f"the MLflow store {self.uri} takes writes again: the kept records were sent")
            self.told_back = True
        self.error = None
        self.delay = 1.0
        return True

    def drain(self, timeout_s: float = 60.0) -> None:
        """Wait until what is queued so far is sent or spooled (an outage: at once) or the
        timeout passes. For the end of a run: what is being recorded is done before its status is
        decided."""
        done = threading.Event()
        self.queue.put(done)
        done.wait(timeout_s)

    def left(self) -> list[dict]:
        """The records the store does not have (after `close`: for good, until a sync)."""
        return self.unsent + self.refused

    def close(self) -> bool:
        """Send everything queued, retrying for a bounded time; True if the store has it all.

        What is left stays in the spool, and the final message says how to send it."""
        if self.closed:
            return not self.left()
        self.closed = True
        self.queue.put(_STOP)
        self.thread.join()
        start, pause = time.monotonic(), 0.5
        while self.unsent and not self._replay():
            locked = "database is locked" in str(self.error)
            if time.monotonic() - start + pause > (LOCK_WAIT_S if locked else DOWN_WAIT_S):
                break
            time.sleep(pause)
            pause = min(2 * pause, 5.0)
        left = self.left()
        if left:
            why = reason(self.error) if self.unsent and self.error else "refused by the store"
            _say(
                f"MLflow run {self.run_id}: the record is incomplete: {describe(left)} did not "
                f"reach {self.uri} ({why}); the store keeps the run's earlier status until then. "
                f"They are kept in {self.spool.path}; complete the record with: "
                f"{SYNC_HINT} {self.spool.path.parent}"
            )
        return not left


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
