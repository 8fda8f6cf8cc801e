"""Minibatches cut by index from whole-dataset tensors: no per-sample work, no DataLoader."""

from __future__ import annotations

from collections.abc import Iterator

import torch


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
