"""The pipeline's own training path, timed from outside: `train(cfg)` with probe callbacks.

The probes are ordinary Lightning callbacks handed to `train()`; they measure over the same spans
as the pipeline's EpochTimer (an epoch's training batches, validation excluded) and time the
MLflow logger's work. "MLflow off" keeps the logger's history (the epoch times are read from it)
but writes nothing to the store.
"""

from __future__ import annotations

import contextlib
import functools
import io
import threading
import time
from collections.abc import Callable

import pytorch_lightning as pl

from pipeline.training.run import train


class CpuEpochClock(pl.Callback):
    """Process CPU seconds of each epoch's training batches (the spans EpochTimer measures)."""

    def __init__(self) -> None:
        self.epochs: list[float] = []
        self.start: float | None = None
        self.elapsed = 0.0

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.elapsed, self.start = 0.0, time.process_time()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.start is None:
            self.start = time.process_time()

    def on_validation_start(self, trainer, pl_module) -> None:
        if self.start is not None:
            self.elapsed += time.process_time() - self.start
        self.start = None

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if self.start is not None:
            self.elapsed += time.process_time() - self.start
            self.start = None
        self.epochs.append(self.elapsed)


class LoggerClock(pl.Callback):
    """Times the run's MLflow logger (`log_metrics`, `flush`, `write_ahead`) and, within it, the
    journal's work on the training thread (appending records, the fsync before each
    checkpoint); `write=False` stops its writes to the journal and the store, which then hold
    nothing but what `train()` records outside the loop."""

    def __init__(self, write: bool) -> None:
        self.write, self.seconds, self.journal_s = write, 0.0, 0.0

    def setup(self, trainer, pl_module, stage: str) -> None:
        logger = trainer.logger
        if not self.write:
            logger.flush = lambda: logger.pending.clear()
        for name in ("log_metrics", "flush", "write_ahead"):
            setattr(logger, name, self.timed(getattr(logger, name), "seconds"))
        if logger.writer is not None:  # its thread's sent-marks are not the training thread's
            journal = logger.writer.spool
            for name in ("_append", "commit"):
                setattr(journal, name, self.timed(getattr(journal, name), "journal_s"))

    def timed(self, method: Callable, total: str) -> Callable:
        @functools.wraps(method)
        def wrapper(*args, **kwargs):
            if threading.current_thread() is not threading.main_thread():
                return method(*args, **kwargs)
            start = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                setattr(self, total, getattr(self, total) + time.perf_counter() - start)

        return wrapper


def pipeline_epochs(cfg_factory: Callable, batch_size: int, epochs: int, write: bool):
    """Run `train()`: its epoch times (wall, CPU), the seconds its logger and journal spent."""
    cfg = cfg_factory(batch_size, epochs)
    cpu, logger = CpuEpochClock(), LoggerClock(write)
    with contextlib.redirect_stdout(io.StringIO()):  # the per-epoch lines of EpochLine
        result = train(cfg, callbacks=[cpu, logger])
    walls = [value for _, value in result.history["epoch_time_s"]]
    return walls, cpu.epochs, logger.seconds, logger.journal_s
