"""Each member's minibatches: member k sees exactly the single run's order for its seed.

A single run draws each epoch's order from (seed, epoch) (data.batching.IndexBatches); a
population stacks its members' orders into `[K, n]` and cuts step s of every member at once:
`x[orders[:, s*B:(s+1)*B]]` is `[K, B, features]`. Validation and test are shared: every
member sees the same minibatches, as the single runs do.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

import torch

from pipeline.data.batching import IndexBatches, limited
from pipeline.data.datamodule import MNISTDataModule

log = logging.getLogger(__name__)


class MemberBatches:
    """One Lightning batch of a population: consecutive steps, each `(x [K, B, ...], y [K, B])`,
    cut when the model reaches it."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor, batch_size: int):
        self.x, self.y, self.index, self.batch_size = x, y, index, batch_size

    def __len__(self) -> int:
        return -(-self.index.shape[1] // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        # One reused buffer, as data.batching.Group(reuse_inputs=True): a step is done with its
        # inputs when the next are cut; `index_select` into it is ~5x faster than x[index].
        k = self.index.shape[0]
        buffer = self.x.new_empty(
            (k * min(self.batch_size, self.index.shape[1]), *self.x.shape[1:])
        )
        for index in self.index.split(self.batch_size, dim=1):
            flat = index.reshape(-1)
            x = torch.index_select(self.x, 0, flat, out=buffer[: len(flat)])
            yield x.view(*index.shape, *self.x.shape[1:]), self.y[flat].view(index.shape)


class MemberGroups:
    """The training epoch of every member, handed to Lightning `size` steps at a time."""

    def __init__(self, x, y, seeds: list[int], batch_size: int, size: int, limit=None) -> None:
        self.per_member = [IndexBatches(x, y, batch_size, True, seed) for seed in seeds]
        self.x, self.y, self.batch_size, self.size = x, y, batch_size, max(1, size)
        self.count = limited(len(self.per_member[0]), limit)  # minibatches, as for single runs
        self.sampler, self.batch_sampler = self, None  # Lightning calls sampler.set_epoch
        self.groups_done: Callable[[], int] = lambda: 0  # population.checkpoint sets it
        self.resume_at: dict[int, int] = {}  # epoch -> groups to skip, from a checkpoint

    def set_epoch(self, epoch: int) -> None:
        for batches in self.per_member:
            batches.set_epoch(epoch)

    def __len__(self) -> int:
        return -(-self.count // self.size)

    def state_dict(self) -> dict[str, int]:
        """The loader's position, in a checkpoint (as data.batching.Groups)."""
        epoch = self.per_member[0].epoch
        return {"epoch": epoch, "groups_done": self.groups_done(), "group_size": self.size,
                "batch_size": self.batch_size}  # fmt: skip

    def load_state_dict(self, state: dict[str, int]) -> None:
        if (state.get("group_size"), state.get("batch_size")) != (self.size, self.batch_size):
            log.warning(
                "the checkpoint was written mid-epoch with other groups (%s): the rest of that "
                "epoch starts again from its first batches, unlike the unbroken run",
                state,
            )
            return
        self.resume_at = {int(state["epoch"]): int(state["groups_done"])}

    def __iter__(self) -> Iterator[MemberBatches]:
        orders = torch.stack([b.order() for b in self.per_member])[
            :, : self.count * self.batch_size
        ]
        step = self.size * self.batch_size
        skip = self.resume_at.pop(self.per_member[0].epoch, 0) * step
        for start in range(skip, orders.shape[1], step):
            yield MemberBatches(self.x, self.y, orders[:, start : start + step], self.batch_size)


class PopulationDataModule(MNISTDataModule):
    """The single run's data module (same loading, split, device and dtype), with one training
    order per member seed; validation and test as for a single run."""

    def __init__(self, seeds: list[int], **kwargs) -> None:
        super().__init__(seed=seeds[0], **kwargs)
        self.seeds = list(seeds)

    def train_dataloader(self) -> MemberGroups:
        if self.trainer is not None and self.trainer.world_size > 1:
            raise RuntimeError("a population trains in one process (no DDP)")
        x, y = self.tensors["train"]
        limit = self.limit_batches.get("train")
        return MemberGroups(x, y, self.seeds, self.batch_size, self.per_group, limit)
