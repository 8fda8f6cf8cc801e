"""A run's writes to the MLflow store, off the training loop, with a local journal first.

Training never waits on tracking. `Writer.submit` appends a record (a batch of metric points,
tags, an artifact, the model, the final status) to the run's journal (tracking.records.Spool,
`mlflow-spool.jsonl` in the run's output folder) and queues it; one background thread sends
the records in order and marks each one sent in the journal. The store is a replica of the
journal: `commit()` makes the journal durable before a checkpoint counts its records as done.

A record the store does not take because it is unavailable (the server down or timing out, a
sqlite store locked by another process) waits, and so does every later record, behind it; they
are retried with backoff while the run goes on, and the user is told once, on stderr. At the
run's end `close()` sends what it can, retrying for a bounded time (tracking.outage.retrying);
what is left, the final status included, stays unsent in the journal and the final message
names the command that completes the record (`python scripts/runs.py sync <output dir>`,
tracking.replay). A resumed run replays it first.
"""

from __future__ import annotations

import contextlib
import queue
import sys
import threading
import time
from pathlib import Path
from typing import Any

from mlflow.tracking import MlflowClient

from pipeline.errors import DiskFull, no_space
from pipeline.tracking.outage import reason, retrying, unavailable
from pipeline.tracking.records import MODEL_NAME, Spool, describe, save_model, send

RETRY_MAX_S = 30.0  # the longest pause between two retries while the run goes on
SYNC_HINT = "python scripts/runs.py sync"

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
        self.no_space: str | None = None  # the first record refused for want of disk space
        self.delay, self.retry_at = 1.0, 0.0
        self.warned = self.told_back = self.closed = False
        self.untold: str | None = None  # close()'s line, kept for the disk-full line to say
        self.thread = threading.Thread(target=self._loop, name="mlflow-writer", daemon=True)
        self.thread.start()

    # What the run records; each call appends it to the journal and queues it.
    def submit(self, op: str, **fields: Any) -> None:
        self.submit_for(self.run_id, op, **fields)

    def submit_for(self, run_id: str, op: str, **fields: Any) -> None:
        """A record of `run_id`: the writer's own run, or a population member's (one writer and
        one journal for all members: population.records)."""
        if self.closed:
            raise RuntimeError("the writer is closed")
        record = {"op": op, "run_id": run_id, "uri": self.uri, **fields}
        self.spool.add(record)  # write-ahead: in the journal before the store sees it
        self.queue.put(record)

    def commit(self) -> None:
        """Everything submitted so far is durable in the journal (before a checkpoint)."""
        self.spool.commit()

    def log_metrics(self, points: list[tuple[str, float, int, int]]) -> None:
        self.submit("metrics", points=points)

    def set_tags(self, tags: dict[str, str]) -> None:
        self.submit("tags", tags=dict(tags))

    def log_artifact(self, path: Path | str, artifact_dir: str | None = None) -> None:
        self.submit("artifact", path=str(Path(path).resolve()), dir=artifact_dir)

    def log_text(self, text: str, artifact_file: str) -> None:
        self.submit("text", text=text, file=artifact_file)

    def log_model(self, net: Any, example: Any) -> None:
        """The model (`models.log_model`), its weights saved next to the spool until the store
        has it (`records.save_model`: tensors and JSON, never a pickled object)."""
        path = self.spool.path.with_name(MODEL_NAME)
        self.spool.path.parent.mkdir(parents=True, exist_ok=True)
        build = save_model(net, example, path)
        self.submit("model", path=str(path.resolve()), build=build)

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
            self.unsent.append(record)
            return
        try:
            send(self.client, record)
        except Exception as error:
            if unavailable(error):
                self.unsent.append(record)
                self._down(error)
            else:
                self._refuse(record, error)
            return
        self.spool.mark_sent(record["seq"])

    def _down(self, error: BaseException) -> None:
        self.error = error
        self.retry_at = time.monotonic() + self.delay
        self.delay = min(2 * self.delay, RETRY_MAX_S)
        if not self.warned:
            self.warned = True
            _say(
                f"warning: the MLflow store {self.uri} does not take writes ({reason(error)}); "
                f"training goes on, its journal {self.spool.path} keeps every record; retrying; "
                f"anything left at the end: {SYNC_HINT} {self.spool.path.parent}"
            )

    def _refuse(self, record: dict, error: BaseException) -> None:
        self.refused.append(record)
        if (full := no_space(error)) is not None:  # the run fails with one line: no warning
            self.no_space = self.no_space or f"{describe([record])}: {full}"
            return
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

    def _send_all(self) -> None:
        if self.unsent and not self._replay():
            raise self.error  # unavailable: `retrying` waits and tries again

    def drain(self, timeout_s: float = 60.0) -> None:
        """Wait until what is queued so far is sent or spooled (an outage: at once) or the
        timeout passes. For the end of a run: what is being recorded is done before its status is
        decided."""
        done = threading.Event()
        self.queue.put(done)
        done.wait(timeout_s)

    def check_space(self) -> None:
        """DiskFull if a record could not be written for want of disk space: called before the
        run's status is decided, so that such a run ends FAILED, not FINISHED with a hole."""
        if self.no_space is not None:
            raise DiskFull(f"no space left to record {self.no_space}")

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
        with contextlib.suppress(Exception):  # what is still unsent after the wait is said below
            retrying(self._send_all)
        left = self.left()
        if left:
            why = reason(self.error) if self.unsent and self.error else "refused by the store"
            if any(r["op"] == "status" for r in left):
                status = "the store keeps the run's earlier status until then"
            else:  # refused records do not hold back the ones behind them
                status = "the run's status is recorded"
            if self.spool.broken is None:
                kept = f"They are kept in {self.spool.path}; complete the record with: "
                kept += f"{SYNC_HINT} {self.spool.path.parent}"
            else:  # a full disk: not even the spool could keep them
                kept = f"They could not be kept in {self.spool.path} either ({self.spool.broken})"
            line = (
                f"MLflow run {self.run_id}: the record is incomplete: {describe(left)} did not "
                f"reach {self.uri} ({why}); {status}. {kept}"
            )
            if self.no_space is None:
                _say(line)
            else:  # the run's one disk-full line says it (tracking.space); `tell()` if not
                self.untold = line
        return not left

    def tell(self) -> None:
        """Say close()'s line if it was kept for a disk-full line that did not come."""
        if self.untold is not None:
            _say(self.untold)
            self.untold = None

    def status_sent(self) -> bool:
        """After close(): the store has the run's final status."""
        return not any(record["op"] == "status" for record in self.left())
