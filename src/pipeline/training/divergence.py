"""Stopping a run whose training loss diverged: NaN, inf, or `diverge_factor` x its first value.

The run then ends FAILED with tag `diverged=true` (a sweep's report lists it as diverged); the
process exits 3, while a sweep's other jobs carry on.
"""

from __future__ import annotations

import math

import pytorch_lightning as pl

from pipeline.errors import Diverged


class DivergenceGuard(pl.Callback):
    """Stops training once the loss is NaN or inf, or `factor` times its first value.

    In float32 an exploding MLP often stays finite (SGD with a huge lr: losses many orders of
    magnitude up, then dead ReLUs at chance level), so the factor catches what the NaN check
    alone would miss.
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
            "try a smaller optimizer.lr",
            loss=float(highest),
            step=trainer.global_step,
        )
