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
  resumed epoch goes on with its next group.

This is the only module that touches Lightning's private state. tests/test_lightning_contract.py
holds each thing it relies on; pyproject.toml caps pytorch-lightning at the newest minor version
that test passed on. docs/training-loop.md states the loop's invariants.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.strategies import SingleDeviceStrategy

from pipeline.data.batching import Group, IndexBatches, limited

log = logging.getLogger(__name__)

Minibatch = tuple[torch.Tensor, torch.Tensor]
# In the checkpoint of a stop mid-epoch (training.signals): the epoch's training sums so far.
EPOCH_SUMS_KEY = "pipeline_train_epoch_sums"


def step_each(
    module: pl.LightningModule,
    group: Iterable[Minibatch],
    loss_of: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, Any]],
) -> list[Any]:
    """One optimizer step per minibatch of `group`; returns what `loss_of` kept of each.

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
    kept = []
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


def epochs_done(checkpoint: dict) -> int | None:
    """Training epochs finished in a Lightning checkpoint (the last one may lack its validation)."""
    try:
        return int(checkpoint["loops"]["fit_loop"]["epoch_progress"]["current"]["processed"])
    except (KeyError, TypeError):
        return None


class Groups:
    """The minibatches of `batches`, handed to Lightning `size` at a time (as a `Group`).

    `limit` counts minibatches, as the user's `trainer.limit_*_batches` does.

    Resumable: a checkpoint written mid-epoch keeps `state_dict()` (Lightning asks every loader
    that has one), and a resumed run gets it back through `load_state_dict`, so that its epoch
    goes on with the groups not yet trained on; without it Lightning would start the epoch's data
    again from the first group. `groups_done` tells how many groups of this epoch are done.
    """

    def __init__(
        self,
        batches: IndexBatches,
        size: int,
        limit: int | float | None = None,
        groups_done: Callable[[], int] = lambda: 0,
    ) -> None:
        self.batches, self.size = batches, max(1, size)
        self.count = limited(len(batches), limit)
        self.sampler, self.batch_sampler = batches, None  # Lightning calls sampler.set_epoch
        self.groups_done = groups_done
        self.resume_at: dict[int, int] = {}  # epoch -> groups to skip, from a checkpoint

    def __len__(self) -> int:
        return -(-self.count // self.size)

    def grouping(self) -> dict[str, int]:
        """How the epoch is cut: a count of groups done means the same samples only under it."""
        b = self.batches
        return {"batch_size": b.batch_size, "group_size": self.size, "world_size": b.world_size}

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.batches.epoch, "groups_done": self.groups_done(), **self.grouping()}

    def load_state_dict(self, state: dict[str, int]) -> None:
        now = self.grouping()
        if any(state.get(key, value) != value for key, value in now.items()):
            log.warning(
                "the checkpoint was written mid-epoch with other batches (%s, now %s): the rest "
                "of that epoch starts again from its first batches, unlike the unbroken run",
                {key: state.get(key) for key in now},
                now,
            )
            return
        self.resume_at = {state["epoch"]: state["groups_done"]}

    def __iter__(self) -> Iterator[Group]:
        # A generator: this runs at the first group, after Lightning's `set_epoch`.
        b = self.batches
        order = b.order()[: self.count * b.batch_size]
        step = self.size * b.batch_size
        for start in range(self.resume_at.pop(b.epoch, 0) * step, len(order), step):
            yield Group(b.x, b.y, order[start : start + step], b.batch_size, reuse_inputs=True)
