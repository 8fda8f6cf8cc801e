"""Each member's record in its own MLflow run, all sent by the population's one writer.

A single run has a `tracking.writer.Writer`: one thread that sends its records in order and
spools what the store cannot take. A population has one such writer for all its members (not a
thread, a connection or a spool per member): `MemberWriter` is a member's view of it, queueing
records under the member's run id. Metric points are handed over per epoch, one `log_batch`
per member (MLflow writes one run per call).
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict

from mlflow.tracking import MlflowClient

from pipeline.tracking import lifecycle, owners
from pipeline.tracking.lifecycle import Status
from pipeline.tracking.writer import Writer


class MemberWriter:
    """A member's writes, queued on the population's writer under the member's run id."""

    # Writer's methods, which only build a record and call `self.submit`.
    log_metrics = Writer.log_metrics
    set_tags = Writer.set_tags
    log_artifact = Writer.log_artifact
    log_text = Writer.log_text
    set_status = Writer.set_status

    def __init__(self, shared: Writer, run_id: str) -> None:
        self.shared, self.run_id = shared, run_id

    def submit(self, op: str, **fields) -> None:
        self.shared.submit_for(self.run_id, op, **fields)

    def close(self) -> bool:  # the population closes the shared writer once, at its end
        return True


class MemberRecords:
    """Metric histories of K member runs, and the end of each run."""

    def __init__(
        self,
        client: MlflowClient,
        writer: Writer,
        run_ids: list[str],
        ended: dict[int, Status] | None = None,  # members whose runs ended before (a resume)
    ) -> None:
        self.client, self.writer, self.run_ids = client, writer, run_ids
        self.views = [MemberWriter(writer, run_id) for run_id in run_ids]
        self.history: list[dict[str, list[tuple[int, float]]]] = [
            defaultdict(list) for _ in run_ids
        ]
        self.pending: list[list[tuple[str, float, int, int]]] = [[] for _ in run_ids]
        self.status: list[Status | None] = [None] * len(run_ids)  # None: still running
        for k, status in (ended or {}).items():
            self.status[k] = status
        # (key, step) points already recorded, which the module logs (again) later: logged
        # ahead of a checkpoint, or in the store before a resume. Each is skipped once.
        self.credit: list[Counter] = [Counter() for _ in run_ids]
        self.beat()

    def log(self, k: int, metrics: dict[str, float], step: int) -> None:
        if self.status[k] is not None:
            return
        now = int(time.time() * 1000)
        for key, value in metrics.items():
            if self.credit[k][key, step] > 0:
                self.credit[k][key, step] -= 1
                continue
            self.history[k][key].append((step, float(value)))
            self.pending[k].append((key, float(value), now, step))

    def ahead(self, k: int, metrics: dict[str, float], step: int) -> None:
        """Log points now that the module logs later (before a checkpoint that counts them)."""
        self.log(k, metrics, step)
        if self.status[k] is None:
            self.credit[k].update((key, step) for key in metrics)

    def resumed(self, k: int, history: dict[str, list[tuple[int, float]]]) -> None:
        """Member k goes on from a checkpoint: its run's points so far, from the store."""
        for key, points in history.items():
            self.history[k][key] = sorted(points)
            self.credit[k].update((key, step) for step, _ in points)

    def flush(self) -> None:
        """Hand every member's pending points to the writer (it does not wait for the store);
        refresh the members' heartbeat once a minute (tracking.owners)."""
        for view, pending in zip(self.views, self.pending, strict=True):
            while pending:
                view.log_metrics(pending[:1000])
                del pending[:1000]
        if time.monotonic() - self.beat_at > owners.HEARTBEAT_EVERY_S:
            self.beat()

    def beat(self) -> None:
        """The running members' `owner.heartbeat` (tracking.owners.Heartbeat's tag)."""
        self.beat_at = time.monotonic()
        beat = {owners.HEARTBEAT_TAG: str(int(time.time()))}
        for k, view in enumerate(self.views):
            if self.status[k] is None:
                view.set_tags(beat)

    def end(self, k: int, status: Status, error: BaseException | None = None) -> None:
        """End member k's run (lifecycle.end_run, through its writer view); once."""
        if self.status[k] is not None:
            return
        self.flush()
        self.status[k] = status
        lifecycle.end_run(self.client, self.run_ids[k], status, error, self.views[k])

    def end_all(self, status: Status, error: BaseException | None = None) -> None:
        for k in range(len(self.run_ids)):
            self.end(k, status, error)

    def last(self, k: int) -> dict[str, float]:
        return {key: points[-1][1] for key, points in self.history[k].items()}
