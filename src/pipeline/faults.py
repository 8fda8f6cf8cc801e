"""How a training run ends when something goes wrong, so that no run is ever left RUNNING.

- SIGINT / SIGTERM: the first one raises KeyboardInterrupt in the main thread at the end of the
  current group of minibatches, mid-epoch included; Lightning then shuts down gracefully (its
  `on_exception` hooks run), `GracefulStop` writes `last.ckpt` there, and the run ends KILLED
  with that checkpoint logged. A signal in an epoch's last group or its validation waits for the
  epoch's end (for a SIGTERM Lightning's own handler stops there first); that epoch's
  `last.ckpt` is the checkpoint then.
- A NaN or inf training loss, or one `diverge_factor` times its first value: `DivergenceGuard`
  stops the run with `Diverged`; the run ends FAILED with tag `diverged=true` (a sweep's report
  lists it as diverged).
- Any other exception: the run ends FAILED with `traceback.txt`.
"""

from __future__ import annotations

import logging
import math
import signal
import threading
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from mlflow.tracking import MlflowClient
from pytorch_lightning.utilities import rank_zero_only

from pipeline import tracking
from pipeline.model import EPOCH_SUMS_KEY

log = logging.getLogger(__name__)

HANDLED_SIGNALS = (signal.SIGINT, signal.SIGTERM)
DIVERGED_TAG = "diverged"  # "true" on runs stopped by a NaN/inf loss; read by the sweep report


class Interrupted(Exception):
    """Training was stopped by a signal; the run is KILLED and its last checkpoint logged."""

    def __init__(self, signum: int, run_id: str, checkpoint: str | None) -> None:
        self.signum, self.run_id, self.checkpoint = signum, run_id, checkpoint
        self.exit_code = 128 + signum  # what a shell reports for a process ended by the signal
        saved = f"checkpoint {Path(checkpoint).name} logged" if checkpoint else "no checkpoint"
        super().__init__(
            f"interrupted by {signal.Signals(signum).name}: MLflow run {run_id} marked KILLED, "
            f"{saved}; continue it with: python train.py resume={run_id}"
        )


class Diverged(RuntimeError):
    """The training loss became NaN or inf; continuing would only produce more NaNs."""


def sigterm_as_interrupt() -> None:
    """SIGTERM raises KeyboardInterrupt like Ctrl-C (main thread only), so `finally` blocks run.

    Python's default for SIGTERM ends the process at once; a sweep's process sets this so that
    its parent run is ended KILLED between jobs too (inside a job `GracefulStop` takes over).
    """
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, signal.default_int_handler)


def is_interrupt(error: BaseException | None) -> bool:
    """A Ctrl-C/SIGTERM on its way out: KeyboardInterrupt, or the exit code `main` gives it."""
    codes = {128 + signum for signum in HANDLED_SIGNALS}
    return isinstance(error, KeyboardInterrupt) or (
        isinstance(error, SystemExit) and error.code in codes
    )


class GracefulStop(pl.Callback):
    """Turns SIGINT/SIGTERM into a clean stop with a checkpoint where training stood.

    From `arm()` until `restore()` the first signal raises KeyboardInterrupt in the main thread
    (Lightning then shuts down and calls `on_exception`, which saves `last.ckpt`) and is
    remembered in `received`. During a training batch (a group of minibatches: data.Groups) the
    raise waits until the batch's end, so that the checkpoint's weights and step counters agree
    and a resumed run takes the epoch's next group; during validation and the epoch-end
    bookkeeping it waits until the next training batch (or the end of training), so an epoch's
    metrics and checkpoints are never cut in half. Later signals are only remembered, so that the
    shutdown is not itself interrupted. Outside the main thread signals cannot be caught.
    """

    def __init__(self, dirpath: Path | str) -> None:
        self.path = Path(dirpath) / "last.ckpt"  # also where the epochs' last.ckpt goes
        self.received: int | None = None
        self.raised = self.deferred = self.at_group_end = False
        self.previous: dict[int, Any] = {}

    def arm(self) -> None:
        if threading.current_thread() is threading.main_thread():
            self.previous = {sig: signal.signal(sig, self.handle) for sig in HANDLED_SIGNALS}

    def restore(self) -> None:
        for signum, old in self.previous.items():
            signal.signal(signum, old)
        self.previous = {}

    def handle(self, signum: int, _frame: Any) -> None:
        if self.received is None:
            self.received = signum
            if not self.deferred:
                self.stop()

    def stop(self) -> None:
        if self.received is not None and not self.raised:
            self.raised = True
            raise KeyboardInterrupt(signal.Signals(self.received).name)

    def on_validation_start(self, trainer, pl_module) -> None:
        self.deferred = trainer.state.fn == "fit"  # validation inside fit, not trainer.validate

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.deferred = False
        self.stop()
        self.deferred = True

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if batch_idx + 1 < trainer.num_training_batches:  # after the last: the epoch's end first
            self.deferred, self.at_group_end = False, True
            self.stop()
            self.at_group_end = False

    def on_train_end(self, trainer, pl_module) -> None:
        self.deferred = False
        self.stop()

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        if self.at_group_end and hasattr(pl_module, "training_sums"):  # this stop's checkpoint
            checkpoint[EPOCH_SUMS_KEY] = pl_module.training_sums()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception) -> None:
        # Only a stop at a group's end is saved: Lightning resumes from there exactly. Anywhere
        # else (an epoch's start, after a signal in the previous epoch's last group or its
        # validation; between groups) its counters would restart one step off, and the epoch-end
        # last.ckpt is the newest consistent state. Several processes (DDP) would have to meet
        # in a barrier to save; they may be gone.
        if not isinstance(exception, KeyboardInterrupt) or not self.at_group_end:
            return
        if trainer.world_size == 1:
            trainer.save_checkpoint(self.path)


class DivergenceGuard(pl.Callback):
    """Stops training once the loss is NaN or inf, or `factor` times its first value.

    In float32 an exploding MLP often stays finite (SGD with lr=100 on MNIST: losses of 1e9, then
    dead ReLUs at chance level), so the factor catches what the NaN check alone would miss.
    The model keeps its first and its highest training loss on the device (`Classifier.
    first_loss`, `max_loss`, NaN-propagating); they are read back after a batch (a group of
    minibatches) once `every_n_steps` optimizer steps have passed, and at the epoch end, so the
    guard adds no per-step GPU synchronisation; with DDP the ranks agree before anyone stops.
    """

    def __init__(self, every_n_steps: int, factor: float | None) -> None:
        self.every, self.factor = max(1, every_n_steps), math.inf if factor is None else factor
        self.checked_at = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step - self.checked_at >= self.every:  # a batch may be many steps
            self.checked_at = trainer.global_step
            self.check(trainer, pl_module)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.check(trainer, pl_module)

    def check(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        first = getattr(pl_module, "first_loss", None)
        highest = getattr(pl_module, "max_loss", None)
        if first is None or highest is None:
            return
        bad = bool(~(highest <= self.factor * first.abs()))  # NaN compares false: also bad
        if not trainer.strategy.reduce_boolean_decision(bad, all=False):
            return
        opt = trainer.optimizers[0]
        lr = float(opt.param_groups[0].get("lr", math.nan))
        raise Diverged(
            f"the training loss reached {float(highest):.4g} (it started at {float(first):.4g}) "
            f"by step {trainer.global_step}, epoch {trainer.current_epoch + 1}, with "
            f"{type(opt).__name__} lr={lr:g}: the run diverged and was stopped; "
            "try a smaller optimizer.lr"
        )


@rank_zero_only
def _log_checkpoint(client: MlflowClient, run_id: str, path: Path | None) -> str | None:
    if path is None or not Path(path).is_file():
        return None
    try:
        client.log_artifact(run_id, str(path), "checkpoints")
    except Exception as error:  # the run's status matters more than the checkpoint copy
        log.warning("could not log checkpoint %s: %s", path, error)
        return None
    return str(path)


def end_failed_run(
    client: MlflowClient,
    run_id: str,
    error: BaseException,
    stop: GracefulStop,
    last_checkpoint: Path | None,
) -> BaseException:
    """Mark the run KILLED or FAILED (tag `diverged` when so); returns what the caller raises.

    Lightning turns a KeyboardInterrupt into `sys.exit(1)`, so a signal is recognised by
    `stop.received`, not by the exception that arrives here.
    """
    stop.restore()
    if stop.received is not None:
        saved = _log_checkpoint(client, run_id, last_checkpoint)
        tracking.end_run(client, run_id, "KILLED")
        return Interrupted(stop.received, run_id, saved)
    if isinstance(error, Diverged):
        error.args = (f"MLflow run {run_id} marked FAILED, tag diverged=true: {error}",)
        if rank_zero_only.rank == 0:
            client.set_tag(run_id, DIVERGED_TAG, "true")
    _log_checkpoint(client, run_id, last_checkpoint)
    tracking.end_run(client, run_id, "FAILED", error)
    return error
