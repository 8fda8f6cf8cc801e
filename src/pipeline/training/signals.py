"""Ctrl-C and SIGTERM: the handler only records the signal; training stops at the next boundary.

Boundaries, and what a stop there leaves behind:
- a group of minibatches' end, inside an epoch: `last.ckpt` is written there (weights, step
  counters, the loader's position and the epoch's training sums agree), so a resumed run goes on
  with the epoch's next group exactly as the unbroken run would;
- an epoch's last group, its validation, or the epoch-end bookkeeping: training goes on to the
  next group's start (or the end of training) and stops there without writing: that epoch's own
  `last.ckpt` is the newest consistent state (Lightning would resume a checkpoint written at an
  epoch's start one step off);
- after fit, after test: `SignalFlag.check()`.
The run then ends KILLED (pipeline.tracking.lifecycle) and the process exits 128 + the signal.
A second signal is only recorded: the stop is not itself interrupted. Signals can be caught in
the main thread only; elsewhere (a thread of another program) the process's handlers stay.
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Any

import pytorch_lightning as pl

from pipeline.training.grouped import EPOCH_SUMS_KEY

HANDLED_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Stopped(Exception):
    """Training was stopped by a signal; the run is KILLED, `checkpoint` the one to resume from."""

    def __init__(
        self,
        signum: int,
        run_id: str = "",
        checkpoint: str | None = None,
        trained_epochs: int | None = None,
    ) -> None:
        self.signum, self.run_id, self.checkpoint = signum, run_id, checkpoint
        self.trained_epochs = trained_epochs  # set when the stop came after training ended
        super().__init__(signal.Signals(signum).name)

    def message(self, in_sweep: bool = False) -> str:
        """What happened, and how to go on; `in_sweep`: the sweep's own last line says how
        (the same command again), not this job's."""
        name, run = signal.Signals(self.signum).name, self.run_id
        saved = f"checkpoint {Path(self.checkpoint).name}" if self.checkpoint else "no checkpoint"
        if in_sweep:
            return f"interrupted by {name}: MLflow run {run} marked KILLED, {saved} logged"
        if self.trained_epochs is None:
            return (
                f"interrupted by {name}: MLflow run {run} marked KILLED, {saved} logged; "
                f"continue it with: python train.py resume={run}"
            )
        # Every epoch was trained: a plain resume would have nothing left to do (it is refused).
        return (
            f"interrupted by {name} after training: MLflow run {run} marked KILLED (its test "
            f"metrics or artifacts may be missing), {saved} logged; train it on with: "
            f"python train.py resume={run} trainer.max_epochs={self.trained_epochs + 5}"
        )


class SignalFlag:
    """Records SIGINT/SIGTERM while it is entered (`with SignalFlag() as flag:`)."""

    entered = 0  # flags entered in this process now: a run is being trained and recorded

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> SignalFlag:
        if threading.current_thread() is threading.main_thread():
            self._previous = {sig: signal.signal(sig, self._record) for sig in HANDLED_SIGNALS}
        SignalFlag.entered += 1
        return self

    def __exit__(self, *exc: object) -> None:
        SignalFlag.entered -= 1
        for signum, old in self._previous.items():
            signal.signal(signum, old)
        self._previous = {}

    def _record(self, signum: int, _frame: Any) -> None:
        if self.received is None:
            self.received = signum

    def check(self) -> None:
        """A boundary outside the training loop: stop here if a signal came."""
        if self.received is not None:
            raise Stopped(self.received)


class StopAtBoundary(pl.Callback):
    """Checks the flag at the training loop's boundaries (see the module docstring)."""

    def __init__(self, flag: SignalFlag, checkpoint: Path) -> None:
        self.flag, self.checkpoint = flag, checkpoint
        self.saved: Path | None = None  # the checkpoint this stop wrote, if any
        self._saving = False

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.flag.check()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.flag.received is None or batch_idx + 1 >= trainer.num_training_batches:
            return  # an epoch's last group: its end (validation, checkpoints) comes first
        # DDP: the ranks would have to meet in a barrier to save, and they may be gone.
        if trainer.world_size == 1:
            self._saving = True
            try:
                trainer.save_checkpoint(self.checkpoint)
            finally:
                self._saving = False
            self.saved = self.checkpoint
        raise Stopped(self.flag.received)

    def on_train_end(self, trainer, pl_module) -> None:
        self.flag.check()

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        # Only this stop's checkpoint carries the epoch's training sums: one written at an
        # epoch's end (or cut short by max_steps) must not hand them to the next epoch.
        if self._saving:
            checkpoint[EPOCH_SUMS_KEY] = pl_module.training_sums()
