"""Lightning callbacks: epoch time, one line per epoch off a terminal, the run id in checkpoints."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

import pytorch_lightning as pl

from pipeline.tracking.logger import MlflowLogger
from pipeline.training import grouped

CKPT_RUN_KEY = "mlflow_run_id"  # stored inside every checkpoint, so `ckpt_path=` finds its run


class EpochTimer(pl.Callback):
    """Logs `epoch_time_s`: wall time of each training epoch's training batches.

    The clock stops when validation starts and restarts at the next training batch, so neither
    validation nor the checkpoint that ModelCheckpoint writes after it (Lightning runs checkpoint
    callbacks last) is counted. A run resumed mid-epoch (Lightning skips `on_train_epoch_start`
    then) counts that epoch from the resume. `done`: the training seconds of the epochs before
    this one (kept in checkpoints), for `so_far` (training.probe).
    """

    def __init__(self) -> None:
        self.elapsed, self.start, self.done = 0.0, None, 0.0

    def so_far(self) -> float:
        """Training seconds of the run up to now: finished epochs plus this one's so far."""
        running = time.perf_counter() - self.start if self.start is not None else 0.0
        return self.done + self.elapsed + running

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """The clock stands still inside (the probe's evaluation is not training time)."""
        if self.start is None:
            yield
            return
        self.elapsed += time.perf_counter() - self.start
        self.start = None
        try:
            yield
        finally:
            self.start = time.perf_counter()

    def state_dict(self) -> dict[str, float]:
        # A checkpoint is written inside an epoch (a stop) or after its validation, before
        # on_train_epoch_end: either way the seconds so far, which the resumed run goes on from.
        return {"done": self.so_far()}

    def load_state_dict(self, state_dict: dict[str, float]) -> None:
        self.done = float(state_dict.get("done", 0.0))

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.elapsed, self.start = 0.0, time.perf_counter()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.start is None:
            self.start = time.perf_counter()

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.start is not None:
            self.elapsed += time.perf_counter() - self.start
        self.start = None

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.start is not None:
            self.elapsed += time.perf_counter() - self.start
            self.start = None
        self.done += self.elapsed
        # Under DDP the epoch lasts as long as its slowest process.
        pl_module.log("epoch_time_s", self.elapsed, on_epoch=True, sync_dist=True, reduce_fx="max")


class EpochLine(pl.Callback):
    """Prints `epoch 2/5  train/loss_epoch 0.31  val/acc 0.912 ...` after each epoch."""

    KEYS = ("train/loss_epoch", "train/acc", "val/loss", "val/acc")

    def __init__(self, timer: EpochTimer) -> None:
        self.timer = timer

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        metrics = trainer.callback_metrics
        values = "  ".join(f"{k} {float(metrics[k]):.4g}" for k in self.KEYS if k in metrics)
        epoch = f"epoch {trainer.current_epoch + 1}/{trainer.max_epochs}"
        print(f"{epoch}  {values}  {self.timer.elapsed:.2f}s", flush=True)


class WriteAhead(pl.Callback):
    """The write-ahead rule: before any checkpoint is written, every metric point it counts as
    done is in the run's journal, on disk (`MlflowLogger.write_ahead`), so a run SIGKILLed
    after it resumes with every point up to it recorded. That includes the epoch's training
    metrics, which Lightning logs only after its epoch-end checkpoints (grouped.epoch_end_metrics).
    Also writes the MLflow run id into the checkpoint (`ckpt_path=` then knows the run)."""

    def __init__(self, logger: MlflowLogger) -> None:
        self.logger = logger

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        due = grouped.epoch_end_metrics(trainer)  # on every rank: it may reduce across them
        if self.logger.run_id:
            checkpoint[CKPT_RUN_KEY] = self.logger.run_id
            self.logger.write_ahead(due)
