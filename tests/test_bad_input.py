"""Bad input: non-zero exit, one message naming the value and the fix, no run, store unchanged."""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import os
import shutil
from pathlib import Path

import pytest
from conftest import free_port, make_cfg, run_cli, runs_in, store_overrides
from mlflow.tracking import MlflowClient

from pipeline.cli.train import main


@pytest.fixture(scope="module")
def template_store(tmp_path_factory) -> Path:
    """A store that already holds one experiment and one finished run (made without training)."""
    store = tmp_path_factory.mktemp("template") / "mlruns"
    client = MlflowClient(f"sqlite:///{store}/mlflow.db")
    experiment = client.create_experiment("mnist-optimizers", (store / "artifacts").as_uri())
    run = client.create_run(experiment).info.run_id
    client.log_metric(run, "val/acc", 0.5)
    client.set_terminated(run)
    return store


@pytest.fixture
def store(template_store: Path, tmp_path: Path) -> Path:
    """A copy per test: creating a sqlite store's tables takes seconds on a busy machine."""
    store = tmp_path / "mlruns"
    shutil.copytree(template_store, store)
    return store


def snapshot(store: Path) -> dict[str, str]:
    """Every file under the store with the hash of its bytes."""
    return {
        str(path.relative_to(store)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(store.rglob("*"))
        if path.is_file()
    }


def write_idx(path: Path, shape: tuple[int, ...], magic: bytes = b"\x00\x00\x08", cut: int = 0):
    """An IDX file of zeros with `shape`; `magic` replaces the type bytes, `cut` drops bytes."""
    header = magic + bytes([len(shape)]) + b"".join(n.to_bytes(4, "big") for n in shape)
    size = 1
    for n in shape:
        size *= n
    data = header + bytes(size)
    path.write_bytes(gzip.compress(data[: len(data) - cut]))


def idx_root(tmp_path: Path, bad: str) -> Path:
    """Four MNIST IDX files in torchvision's layout; `bad` says how train-images is broken."""
    raw = tmp_path / "idx" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for split, n in (("train", 100), ("t10k", 20)):
        write_idx(raw / f"{split}-labels-idx1-ubyte.gz", (n,))
        write_idx(raw / f"{split}-images-idx3-ubyte.gz", (n, 28, 28))
    images = raw / "train-images-idx3-ubyte.gz"
    if bad == "magic":
        write_idx(images, (100, 28, 28), magic=b"\x00\x00\x0d")  # float IDX, not MNIST bytes
    elif bad == "truncated":
        write_idx(images, (100, 28, 28), cut=784 * 3)
    return tmp_path / "idx"


# Overrides that must be refused, and words the one-line message must contain.
VALUE_CASES = {
    "wrong type": (["optimizer.lr=abc"], ["optimizer.lr='abc'", "number", "optimizer.lr=0.01"]),
    "lr zero": (["optimizer.lr=0"], ["optimizer.lr=0", "(0, inf)"]),
    "lr negative": (["optimizer.lr=-1"], ["optimizer.lr=-1", "(0, inf)"]),
    "momentum 1": (["optimizer=momentum", "optimizer.momentum=1.0"], ["momentum=1.0", "[0, 1)"]),
    "momentum negative": (["optimizer.momentum=-0.1"], ["momentum=-0.1", "[0, 1)"]),
    "batch_size 0": (["data.batch_size=0"], ["data.batch_size=0", "integer > 0"]),
    "batch_size negative": (["data.batch_size=-5"], ["data.batch_size=-5", "integer > 0"]),
    "val_size too large": (["data.val_size=5000"], ["data.val_size=5000", "4000 samples"]),
    "samples_per_group 0": (["data.samples_per_group=0"], ["samples_per_group=0", "integer > 0"]),
    "limit negative": (["trainer.limit_train_batches=-1"], ["limit_train_batches=-1", "[0, 1]"]),
    "devices": (["trainer.devices=4096"], ["trainer.devices=4096", "more than this machine"]),
    "trainer key": (["+trainer.foo=1"], ["trainer.foo", "not an argument"]),
}


@pytest.mark.parametrize("case", list(VALUE_CASES))
def test_bad_value_is_refused_before_any_run(case, store, tmp_path, capsys):
    overrides, words = VALUE_CASES[case]
    before = snapshot(store)
    with pytest.raises(SystemExit) as exit_info:
        main(make_cfg(tmp_path, *overrides))
    assert exit_info.value.code == 2
    message = capsys.readouterr().err.strip()
    assert message.startswith("error: ") and "\n" not in message, message
    for word in words:
        assert word in message, (word, message)
    assert snapshot(store) == before
    assert len(runs_in(store)) == 1


@pytest.mark.parametrize(
    "bad, words",
    [
        ("missing", ["data.source=local", "no mnist IDX files", "data.source=embedded"]),
        ("magic", ["train-images-idx3-ubyte.gz", "bad magic number"]),
        ("truncated", ["train-images-idx3-ubyte.gz", "truncated or corrupt", "fetch it again"]),
    ],
)
def test_bad_local_data_is_refused(bad, words, store, tmp_path, capsys):
    root = tmp_path / "empty" if bad == "missing" else idx_root(tmp_path, bad)
    root.mkdir(exist_ok=True)
    before = snapshot(store)
    with pytest.raises(SystemExit) as exit_info:
        main(make_cfg(tmp_path, "data.source=local", f"data.root={root}"))
    assert exit_info.value.code == 2
    message = capsys.readouterr().err.strip()
    assert message.startswith("error: ") and "\n" not in message, message
    for word in words:
        assert word in message, (word, message)
    assert snapshot(store) == before


@contextlib.contextmanager
def as_nobody():
    """As root, permission bits do not stop writes: act as `nobody` for the block."""
    if os.geteuid() != 0:
        yield
        return
    os.seteuid(65534)
    try:
        yield
    finally:
        os.seteuid(0)


def test_read_only_store_is_refused(store, tmp_path, capsys):
    for folder in (tmp_path, *store.rglob("*")):
        if folder.is_dir():
            folder.chmod(0o755)
    store.chmod(0o555)  # read-only mlruns/
    before = snapshot(store)
    try:
        with as_nobody(), pytest.raises(SystemExit) as exit_info:
            main(make_cfg(tmp_path))
    finally:
        store.chmod(0o755)
    assert exit_info.value.code == 2
    message = capsys.readouterr().err.strip()
    assert f"tracking.uri='sqlite:///{store}/mlflow.db'" in message
    assert "cannot be created or written" in message and "Permission denied" in message
    assert snapshot(store) == before


def test_unreachable_tracking_server_is_refused_quickly(tmp_path, capsys):
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    cfg = make_cfg(tmp_path, f"tracking.uri={uri}")
    with pytest.raises(SystemExit) as exit_info:
        main(cfg)
    assert exit_info.value.code == 2
    message = capsys.readouterr().err.strip()
    assert f"tracking.uri='{uri}'" in message and "does not answer" in message
    assert "refused" in message.lower()


@pytest.mark.slow
@pytest.mark.parametrize(
    "override, words",
    [
        ("optimizer=nope", ["Could not find 'optimizer/nope'", "Available options", "adam"]),
        ("data=nope", ["Could not find 'data/nope'", "Available options", "fashion_mnist"]),
        ("trainer=nope", ["Could not find 'trainer/nope'", "Available options", "cpu"]),
        ("optimizer.foo=1", ["Could not override 'optimizer.foo'", "+optimizer.foo=1"]),
        ("data.batch_size=0", ["error: data.batch_size=0 is not allowed", "integer > 0"]),
    ],
)
def test_cli_refuses_bad_input(override, words, tmp_path):
    """Through `python train.py` as a user types it: Hydra's own messages for presets and keys."""
    store = tmp_path / "mlruns"
    result = run_cli(override, *store_overrides(store), "data.source=embedded")
    assert result.returncode != 0
    for word in words:
        assert word in result.stderr, (word, result.stderr)
    assert "Traceback" not in result.stderr
    assert not (store / "mlflow.db").exists()
