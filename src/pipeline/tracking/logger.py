"""Lightning's metrics into one existing MLflow run, batched, written off the training loop."""

from __future__ import annotations

import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from mlflow.tracking import MlflowClient
from pytorch_lightning.loggers.logger import Logger
from pytorch_lightning.utilities import rank_zero_only

from pipeline.tracking.records import SPOOL_NAME
from pipeline.tracking.writer import Writer


class MlflowLogger(Logger):
    """Writes Lightning's metrics into one existing MLflow run, batched.

    One `log_batch` per few seconds instead of one per logging step keeps the sqlite store's
    single writer free (parallel jobs) and the logging cost a small part of an epoch. `flush`
    hands the batch to the run's `writer` (tracking.writer): appended to the run's journal (the
    `spool` file), then sent by its thread; training never waits on the store. `write_ahead`
    runs before every checkpoint: nothing a checkpoint counts as done is missing from the journal.
    """

    def __init__(self, flush_every_s: float = 5.0, spool: Path | None = None) -> None:
        super().__init__()
        self.client: MlflowClient | None = None
        self.run_id: str | None = None
        self.writer: Writer | None = None  # rank 0's, from bind() on
        self.spool = spool
        self.flush_every_s = flush_every_s
        self.pending: list[tuple[str, float, int, int]] = []  # (key, value, timestamp, step)
        self.history: dict[str, list[tuple[int, float]]] = defaultdict(list)
        self.recorded_until: dict[str, int] = {}  # a resumed run's last step per metric
        self.last_flush = time.monotonic()

    def bind(self, client: MlflowClient, run_id: str) -> None:
        self.client, self.run_id = client, run_id
        if rank_zero_only.rank == 0 and run_id:  # DDP: only rank 0 writes
            spool = self.spool or Path(tempfile.mkdtemp(prefix="mlflow-spool-")) / SPOOL_NAME
            self.writer = Writer(client, run_id, spool)

    def continue_run(self, history: dict[str, list[tuple[int, float]]]) -> None:
        """A resumed run: its points so far. Steps it has already recorded are not written again:
        a run that goes on from a checkpoint older than its last points (a SIGKILL mid-epoch
        leaves the epoch's start as the newest checkpoint) trains them again."""
        self.history.update(history)
        self.recorded_until = {key: max(s for s, _ in points) for key, points in history.items()}

    @property
    def name(self) -> str:
        return "mlflow"

    @property
    def version(self) -> str:
        return self.run_id or ""

    @rank_zero_only
    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        pass  # the whole resolved config is logged by start_run

    @rank_zero_only
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        timestamp = int(time.time() * 1000)
        for key, value in metrics.items():
            if (step or 0) <= self.recorded_until.get(key, -1):
                continue
            self.history[key].append((step or 0, float(value)))
            self.pending.append((key, float(value), timestamp, step or 0))
        if time.monotonic() - self.last_flush > self.flush_every_s:
            self.flush()

    @rank_zero_only
    def flush(self) -> None:
        """Hand the pending points to the writer (it does not wait for the store)."""
        if self.writer is None:
            return
        while self.pending:
            batch, self.pending = self.pending[:1000], self.pending[1000:]
            self.writer.log_metrics(batch)
        self.last_flush = time.monotonic()

    @rank_zero_only
    def write_ahead(self, due: tuple[dict[str, float], int] | None = None) -> None:
        """Before a checkpoint is written: the pending points, and `due` (metrics that Lightning
        logs only after this checkpoint, at `step`: an epoch's training metrics), appended to
        the journal and made durable. A point logged ahead is not logged again."""
        if due is not None:
            metrics, step = due
            self.log_metrics(metrics, step)
            for key in metrics:
                self.recorded_until[key] = max(step, self.recorded_until.get(key, -1))
        self.flush()
        if self.writer is not None:
            self.writer.commit()

    def save(self) -> None:
        # Lightning calls save() after every log_metrics: writing each time would undo the
        # batching (one sqlite write per logging step); the end of the run flushes the rest.
        if time.monotonic() - self.last_flush > self.flush_every_s:
            self.flush()

    def finalize(self, status: str) -> None:
        self.flush()  # the run's status is set by train(), which knows why it ended, and the
        # writer is closed by lifecycle.end_run, after the status
