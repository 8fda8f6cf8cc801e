"""Groups of minibatches: Lightning's batch is a group; the model steps once per minibatch.

Lightning spends more Python per batch on hooks, loops and bookkeeping than a whole optimizer
step of this MLP takes at batch 64. So the data module hands Lightning groups of
`data.samples_per_group` samples, and `step_each` takes one plain PyTorch optimizer step per
minibatch of a group; Lightning's cost is paid once per group. Nothing recorded changes:

- `trainer.global_step`, checkpoints, `max_steps` and the metric step axis count optimizer
  steps (minibatches), as they would without groups (`_count_steps` moves Lightning's counters);
- `trainer.limit_*_batches` count minibatches (the data module applies them, not Lightning);
- callbacks' `on_train_batch_*` hooks run once per group: a group's end is the finest point at
  which weights, step counters and the loader's position agree (signals stop there);
- a checkpoint written mid-epoch holds the loader's position (`Groups.state_dict`), so a
  resumed epoch goes on with its next group;
- `epoch_end_metrics` reads the epoch's metrics before Lightning logs them, after its epoch-end
  checkpoints (the write-ahead rule: tracking.writer).

This is the only module that touches Lightning's private state. tests/test_lightning_contract.py
holds each thing it relies on; pyproject.toml caps pytorch-lightning at the newest minor version
that test passed on. docs/training-loop.md states the loop's invariants.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

import pytorch_lightning as pl
import torch
from lightning_fabric.utilities.apply_func import convert_tensors_to_scalars
from pytorch_lightning.strategies import SingleDeviceStrategy

log = logging.getLogger(__name__)

Minibatch = tuple[torch.Tensor, torch.Tensor]


def step_each(
    module: pl.LightningModule,
    group: Iterable[Minibatch],
    loss_of: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, Any]],
    after_step: Callable[[int], None] | None = None,
) -> list[Any]:
    """One optimizer step per minibatch of `group`; returns what `loss_of` kept of each.
    `after_step(n)`, if given, runs after each step with the run's optimizer steps so far (the
    step probe: training.probe), whatever Lightning's counters say inside the group.

    `module` trains with manual optimization. Lightning's own step (`manual_backward` + its
    optimizer wrapper) has work to do only when gradients are synced across processes (DDP's
    reducer) or fp16 losses are scaled; otherwise the plain PyTorch step is the same step,
    without Lightning's per-step hooks. A learning-rate schedule (`interval: step`) steps after
    every optimizer step: Lightning leaves that to manual optimization.
    """
    trainer = module.trainer
    optimizer = module.optimizers()
    scheduler = module.lr_schedulers()
    strategy = trainer.strategy
    plain = isinstance(strategy, SingleDeviceStrategy) and (
        getattr(strategy.precision_plugin, "scaler", None) is None
    )
    first, kept = trainer.global_step, []
    for x, y in group:
        optimizer.zero_grad()
        loss, keep = loss_of(x, y)
        if plain:
            loss.backward()
            optimizer.optimizer.step()
        else:
            module.manual_backward(loss)
            optimizer.step()
        if scheduler is not None:
            scheduler.step()
        kept.append(keep)
        if after_step is not None:
            after_step(first + len(kept))
    _count_steps(trainer, len(kept), plain)
    return kept


def _count_steps(trainer: pl.Trainer, steps: int, plain: bool) -> None:
    """Lightning counts one optimizer step (`global_step`) and one logger step (the metric step
    axis) per `training_step`; a group takes `steps`. The plain step bypasses the wrapper that
    counts optimizer steps otherwise."""
    loop = trainer.fit_loop.epoch_loop
    if plain:
        loop.manual_optimization.optim_step_progress.increment_by(steps)
    loop._batches_that_stepped += steps - 1


def groups_done(trainer: pl.Trainer) -> int:
    """Groups of this epoch that Lightning has trained on: its progress counts a group once
    `training_step` and `on_train_batch_end` are through."""
    return trainer.fit_loop.epoch_loop.batch_progress.current.processed


def resuming_mid_epoch(trainer: pl.Trainer) -> bool:
    """Whether this fit goes on inside an epoch that a checkpoint left unfinished."""
    return bool(trainer.fit_loop.epoch_loop.restarting)


def epoch_end_metrics(trainer: pl.Trainer) -> tuple[dict[str, float], int] | None:
    """At an epoch's end, before Lightning logs it: (the epoch's metrics, the step) exactly as
    `update_train_epoch_metrics` will log them after the epoch-end callbacks (checkpoints) have
    run; None elsewhere (inside an epoch, validation, test)."""
    loop = trainer.fit_loop
    connector = trainer._logger_connector
    progress = loop.epoch_progress.current
    if not trainer.training or connector._first_loop_iter is not None:
        return None
    if progress.processed <= progress.completed or trainer._results is None:
        return None
    metrics = convert_tensors_to_scalars(connector.metrics["log"])
    if not metrics:
        return None
    metrics.setdefault("epoch", trainer.current_epoch)
    return metrics, loop.epoch_loop._batches_that_stepped - 1


def epochs_done(checkpoint: dict) -> int | None:
    """Training epochs finished in a Lightning checkpoint (the last one may lack its validation)."""
    try:
        return int(checkpoint["loops"]["fit_loop"]["epoch_progress"]["current"]["processed"])
    except (KeyError, TypeError):
        return None


class GroupedLoop(pl.Callback):
    """Ties the data's groups and the model's saved sums to Lightning's progress, which only
    this module reads: the training loader learns how many of this epoch's groups are done (for
    a mid-epoch checkpoint, `Groups.state_dict`), and a run resumed mid-epoch gets back the
    epoch's training sums its checkpoint saved (`Classifier.restore_training_sums`)."""

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        loader = trainer.train_dataloader
        if hasattr(loader, "groups_done"):
            loader.groups_done = lambda: groups_done(trainer)
        if resuming_mid_epoch(trainer) and hasattr(pl_module, "restore_training_sums"):
            pl_module.restore_training_sums()
