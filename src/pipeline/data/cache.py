"""The loaded dataset, kept in the process for the next training job that asks for the same one.

A sweep's jobs share processes: all of them with Hydra's basic launcher, several per worker with
joblib. Reading the IDX files, splitting and normalising 70,000 images costs ~0.5 s of a job,
the same every time. The tensors are only read during training (minibatches are copies cut by
index), so the next job in the process starts from the same ones.

The key is everything `MNISTDataModule.load` depends on, with the data files' paths, sizes and
modification times: files replaced between two jobs are read again. One dataset is kept at a
time, so a sweep over data settings never holds more than one extra copy.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from pipeline.config.choices import DATASETS
from pipeline.data.sources import IDX_FILES, local_root

Tensors = dict[str, tuple[torch.Tensor, torch.Tensor]]
_kept: dict[tuple, tuple[Tensors, str | None]] = {}


def _files(root: Path, name: str) -> tuple[tuple[str, int, int], ...]:
    """(path, size, mtime) of every IDX file `load` may read for `name` under `root`."""
    found = []
    for stem in (s for pair in IDX_FILES.values() for s in pair):
        for folder in (root / DATASETS.get(name, name) / "raw", root):
            for path in (folder / stem, folder / f"{stem}.gz"):
                try:
                    stat = path.stat()
                except OSError:
                    continue
                found.append((str(path), stat.st_size, stat.st_mtime_ns))
    return tuple(found)


def key(name: str, root: Path, source: str, *settings: object) -> tuple:
    """What the loaded tensors depend on: the data's name, root and source, the loader's other
    `settings` (split seed, validation size, normalisation), and the files themselves."""
    root = root.resolve()
    return (name, str(root), source, *settings, _files(local_root(root, name), name))


def load(
    wanted: tuple, fresh: Callable[[], tuple[Tensors, str | None]]
) -> tuple[Tensors, str | None]:
    """`fresh()` (the tensors and the source used), or what it gave last time in this process
    for the same key."""
    if wanted not in _kept:
        _kept.clear()  # before loading: the old copy is not held next to the new one
        _kept[wanted] = fresh()
    tensors, source_used = _kept[wanted]
    return dict(tensors), source_used


def clear() -> None:
    _kept.clear()
