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

from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.config.choices import DATASETS
from pipeline.data.sources import IDX_FILES, local_root

if TYPE_CHECKING:
    from pipeline.data.datamodule import MNISTDataModule

_kept: dict[tuple, tuple[dict, str | None]] = {}


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


def key(datamodule: MNISTDataModule) -> tuple:
    d, root = datamodule, datamodule.root.resolve()
    files = _files(local_root(root, d.name), d.name)
    return (d.name, str(root), d.source, d.split_seed, d.val_size, d.mean, d.std, files)


def load(datamodule: MNISTDataModule) -> None:
    """`datamodule.load()`, or the tensors it loaded last time in this process for the same key."""
    wanted = key(datamodule)
    if wanted in _kept:
        tensors, source_used = _kept[wanted]
        datamodule.tensors, datamodule.source_used = dict(tensors), source_used
        return
    _kept.clear()  # before loading: the old copy is not held next to the new one
    datamodule.load()
    _kept[wanted] = (dict(datamodule.tensors), datamodule.source_used)


def clear() -> None:
    _kept.clear()
