"""The whole dataset held as tensors on the training device, handed to Lightning in groups."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch

from pipeline.data import cache
from pipeline.data.batching import Group, Groups, IndexBatches
from pipeline.data.sources import load_splits, val_count


def input_dtype(precision: str | int | None) -> torch.dtype:
    """The inputs' dtype for a trainer precision: float64 under `64-true` (Lightning converts the
    model to float64 and leaves the data alone), float32 otherwise (mixed precision casts in
    autocast)."""
    return torch.float64 if str(precision).startswith("64") else torch.float32


class MNISTDataModule(pl.LightningDataModule):
    """Loads a whole dataset once (`load`), moves it to the training device (`setup`)."""

    def __init__(
        self,
        name: str = "mnist",
        root: str = "data",
        source: str = "auto",
        batch_size: int = 64,
        val_size: float | int = 0.1,
        split_seed: int = 0,
        mean: float = 0.5,
        std: float = 0.5,
        samples_per_group: int = 8192,
        seed: int = 0,
        limit_batches: dict[str, int | float | None] | None = None,
    ) -> None:
        super().__init__()
        self.name, self.root, self.source = name, Path(root), source
        self.batch_size, self.val_size, self.split_seed = batch_size, val_size, split_seed
        self.mean, self.std, self.seed = mean, std, seed
        self.per_group = max(1, samples_per_group // batch_size)
        self.limit_batches = limit_batches or {}
        self.tensors: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.source_used: str | None = None

    def load(self) -> None:
        """Read and split the data on the CPU; raises DataError with a fix when it cannot."""
        if self.tensors:
            return
        splits, self.source_used = load_splits(self.root, self.name, self.source, self.split_seed)
        train_images, train_labels = splits["train"]
        n_val = val_count(self.val_size, len(train_images))
        order = np.random.default_rng(self.split_seed).permutation(len(train_images))
        by_split = {
            "train": (train_images[order[n_val:]], train_labels[order[n_val:]]),
            "val": (train_images[order[:n_val]], train_labels[order[:n_val]]),
            "test": splits["test"],
        }
        for split, (images, labels) in by_split.items():
            x = torch.tensor(images).reshape(len(images), -1).float()  # copies the read-only buffer
            x = (x / 255 - self.mean) / self.std  # once for the whole set, not per sample
            self.tensors[split] = (x, torch.tensor(labels, dtype=torch.long))

    @property
    def sizes(self) -> dict[str, int]:
        return {split: len(y) for split, (_, y) in self.tensors.items()}

    def load_shared(self) -> None:
        """`load`, or the tensors an earlier job of this process loaded for the same data."""

        def fresh() -> tuple[cache.Tensors, str | None]:
            self.load()
            return self.tensors, self.source_used

        self.tensors, self.source_used = cache.load(self.cache_key(), fresh)

    def cache_key(self) -> tuple:
        settings = (self.split_seed, self.val_size, self.mean, self.std)
        return cache.key(self.name, self.root, self.source, *settings)

    def setup(self, stage: str | None = None) -> None:
        self.load()
        device = self.trainer.strategy.root_device if self.trainer else torch.device("cpu")
        dtype = input_dtype(self.trainer.precision if self.trainer else None)
        self.tensors = {
            k: (x.to(device, dtype), y.to(device)) for k, (x, y) in self.tensors.items()
        }

    def transfer_batch_to_device(self, batch: Group, device: torch.device, dataloader_idx: int):
        return batch  # `setup` put the whole dataset on the device: a group's cuts are there

    def _groups(self, split: str, shuffle: bool, whole: bool = False, **kwargs) -> Groups:
        x, y = self.tensors[split]
        rank, world = (
            (self.trainer.global_rank, self.trainer.world_size) if self.trainer else (0, 1)
        )
        batches = IndexBatches(x, y, self.batch_size, shuffle, self.seed, rank, world)
        size = len(batches) if whole else self.per_group  # `whole`: the split in one group
        return Groups(batches, size, self.limit_batches.get(split), **kwargs)

    def train_dataloader(self) -> Groups:
        # training.grouped.GroupedLoop tells it how many groups are done (Lightning's progress)
        return self._groups("train", shuffle=True)

    # Validation and test are one group each: they take no optimizer steps, so nothing is gained
    # by cutting them, and Lightning's own SIGTERM handling, which stops an evaluation between
    # its batches (and loses its sums), then waits for the epoch's end.
    def val_dataloader(self) -> Groups:
        return self._groups("val", shuffle=False, whole=True)

    def test_dataloader(self) -> Groups:
        return self._groups("test", shuffle=False, whole=True)
