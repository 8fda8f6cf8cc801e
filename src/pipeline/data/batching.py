"""Minibatches cut by index from whole-dataset tensors: no per-sample work, no DataLoader; and
the groups of them that Lightning takes as one batch (pipeline.training.grouped)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

import torch

log = logging.getLogger(__name__)


class IndexBatches:
    """Batches of (x, y) cut from whole-dataset tensors by index; no per-sample work.

    Shuffling uses a generator seeded from (seed, epoch), so every DDP rank draws the same
    permutation and takes its own stride of it, and a resumed run shuffles as an unbroken one.
    """

    def __init__(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        batch_size: int,
        shuffle: bool,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.x, self.y, self.batch_size, self.shuffle = x, y, batch_size, shuffle
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.epoch = 0
        # Lightning calls `sampler.set_epoch(epoch)` before each epoch (also after a resume).
        self.sampler = self
        self.batch_sampler = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        per_rank = -(-len(self.x) // self.world_size)
        return -(-per_rank // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        yield from Group(self.x, self.y, self.order(), self.batch_size)

    def order(self) -> torch.Tensor:
        """This epoch's sample indices for this rank, in training order."""
        n = len(self.x)
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            order = torch.randperm(n, generator=generator)
        else:
            order = torch.arange(n)
        if self.world_size > 1:  # pad so that every rank runs the same number of steps
            order = torch.cat([order, order[: (-n) % self.world_size]])[
                self.rank :: self.world_size
            ]
        return order.to(self.x.device)


def limited(count: int, limit: int | float | None) -> int:
    """Lightning's `limit_*_batches` rule: None = all, a float = that share, an int = at most."""
    if limit is None:
        return count
    if isinstance(limit, float):
        return max(1, int(count * limit)) if limit > 0 else 0
    return min(count, limit)


class Group:
    """One Lightning batch: consecutive minibatches, each cut from the dataset only when the model
    reaches it: one minibatch's copy in memory at a time, not a whole group's (25 MB at 8192).

    `reuse_inputs` (the groups handed to Lightning): the inputs are cut into one buffer, reused
    for each minibatch of the group, so a minibatch's `x` is overwritten when the next one is
    drawn. The model's step is done with it by then (autograd's version check would refuse a
    backward through an overwritten input); whoever keeps minibatches must copy them. A fresh
    tensor per minibatch (`x[index]`) costs an allocation whose memory has to be brought in again:
    a measurable share of a step (docs/performance.md).
    """

    def __init__(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        index: torch.Tensor,
        batch_size: int,
        reuse_inputs: bool = False,
    ) -> None:
        self.x, self.y, self.index, self.batch_size = x, y, index, batch_size
        self.reuse_inputs = reuse_inputs

    def __len__(self) -> int:
        return -(-len(self.index) // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if not self.reuse_inputs:
            for index in self.index.split(self.batch_size):
                yield self.x[index], self.y[index]
            return
        buffer = self.x.new_empty((min(self.batch_size, len(self.index)), *self.x.shape[1:]))
        for index in self.index.split(self.batch_size):
            yield torch.index_select(self.x, 0, index, out=buffer[: len(index)]), self.y[index]


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
