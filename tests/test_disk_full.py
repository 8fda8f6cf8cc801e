"""A disk that fills up at any point of a run: one `error:` line and no warning before it,
exit 1, the run FAILED (never RUNNING where the store can still be written), the store intact,
every other run as it was, and the next command works.

The disk is full for real (tests/fsize.py: RLIMIT_FSIZE, so writes fail with the kernel's EFBIG,
no root needed): at run creation (the artifact root takes no config.yaml), during training (a
checkpoint grows past the limit) and while the finished run's artifacts are recorded. As root
(CI), also on a small tmpfs: the whole disk full at the end (the store still takes FAILED once
the cut file is gone), and the store's disk full (the run stays RUNNING, the line says so, and
`runs.py sync` ends it FAILED once there is space).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import subprocess
import sys
import zipfile
from pathlib import Path

import procs
import pytest
from conftest import ONE_EPOCH, ROOT, _empty_store_db, run_in_process, runs_in, store_overrides
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.slow

TINY = ONE_EPOCH
BIG = "model.hidden_sizes=[1500]"  # a 4.7 MB checkpoint: past the limit, the store is not
MiB = 2**20


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> tuple[Path, str]:
    """A store holding one FINISHED run, which no later fault may change."""
    root = tmp_path_factory.mktemp("template")
    store = root / "mlruns"
    args = [*TINY, "tracking.log_model=false", *store_overrides(store)]
    assert run_in_process(*args, f"hydra.run.dir={root / 'out'}") == 0
    (run,) = runs_in(store)
    return store, run.info.run_id


def record(store: Path, run_id: str) -> dict:
    client = MlflowClient(f"sqlite:///{store}/mlflow.db")
    run = client.get_run(run_id)
    return {
        "info": (run.info.status, run.info.end_time),
        "params": run.data.params,
        "tags": run.data.tags,
        "metrics": {
            key: [(m.step, m.value) for m in client.get_metric_history(run_id, key)]
            for key in run.data.metrics
        },
        "artifacts": sorted(a.path for a in client.list_artifacts(run_id)),
    }


def integrity(db: Path) -> str:
    with sqlite3.connect(db) as connection:
        return connection.execute("PRAGMA integrity_check").fetchone()[0]


def on_a_full_disk(mode: str, size: int, store: Path, out: Path, *args: str):
    return subprocess.run(
        [sys.executable, str(ROOT / "tests" / "fsize.py"), mode, str(size), *TINY]
        + [*store_overrides(store), f"hydra.run.dir={out}", *args],
        cwd=ROOT,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=600,
    )


# (mode, limit: None = the store's size + 1 MiB, extra overrides, words of the error line)
CASES = {
    "run creation": ("artifacts", 0, [], ["marked FAILED", "to record its config"]),
    "checkpoint mid-run": (
        "from-start",
        None,
        [BIG, "tracking.log_model=false"],
        ["marked FAILED", "no space left to write", "File too large"],
    ),
    "artifacts at the end": ("end", 256 * 2**10, [], ["marked FAILED", "no space left to record"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_full_disk_fails_the_run_and_nothing_else(case, template, tmp_path, capsys):
    mode, size, extra, words = CASES[case]
    template_store, kept_id = template
    store = tmp_path / "mlruns"
    shutil.copytree(template_store, store)
    db = store / "mlflow.db"
    before = record(store, kept_id)
    size = db.stat().st_size + MiB if size is None else size

    done = on_a_full_disk(mode, size, store, tmp_path / "out", *extra)

    output = done.stdout + done.stderr
    assert done.returncode == 1, output[-3000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    assert "warning:" not in output, output[-3000:]  # the error line says it all
    for word in words:
        assert word in errors[0], (word, errors[0])
    (new,) = [r for r in runs_in(store) if r.info.run_id != kept_id]
    assert new.info.status == "FAILED" and new.info.run_id in errors[0]
    assert integrity(db) == "ok"
    assert record(store, kept_id) == before  # the other run: as it was

    if case == "artifacts at the end":  # what the disk did not take waits in the run's spool
        synced = subprocess.run(
            [sys.executable, str(ROOT / "scripts" / "runs.py"), "sync", str(tmp_path / "out")],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert synced.returncode == 0, synced.stdout + synced.stderr
        client = MlflowClient(f"sqlite:///{db}")
        names = {a.path for a in client.list_artifacts(new.info.run_id)}
        assert {"checkpoints", "curves.png", "test_correct.npy"} <= names, names
        models = client.search_logged_models([new.info.experiment_id])
        # The attempt the disk stopped is FAILED, not left PENDING; the sync's is the model.
        assert sorted(str(m.status) for m in models) == ["FAILED", "READY"], models
        assert {m.source_run_id for m in models} == {new.info.run_id}
        assert client.get_run(new.info.run_id).info.status == "FAILED"  # as the run ended

    # The next command, on the same store and disk (with space again), works.
    capsys.readouterr()
    args = [*TINY, "tracking.log_model=false", *store_overrides(store)]
    assert run_in_process(*args, f"hydra.run.dir={tmp_path / 'next'}") == 0
    statuses = sorted(r.info.status for r in runs_in(store))
    assert statuses == ["FAILED", "FINISHED", "FINISHED"]
    assert integrity(db) == "ok"


# A disk that is full for every file, as a user meets it: a small tmpfs (root only; CI runs
# as root). Without the right to mount, these skip.
@pytest.fixture
def tmpfs(tmp_path):
    """`mount(size)`: a fresh tmpfs of `size` bytes under tmp_path; unmounted at the end."""
    mounted: list[Path] = []

    def mount(size: int) -> Path:
        where = tmp_path / f"tmpfs-{len(mounted)}"
        where.mkdir()
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip() or done.returncode}")
        mounted.append(where)
        return where

    if shutil.which("mount") is None or os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    yield mount
    for where in reversed(mounted):
        subprocess.run(["umount", "-l", str(where)], check=False)


def fill(disk: Path) -> Path:
    """Take every free byte of `disk`; returns the file that holds them."""
    filler = disk / "filler"
    with filler.open("wb", buffering=0) as file:
        for block in (65536, 4096, 512):  # down to the last bytes
            with contextlib.suppress(OSError):
                while file.write(b"\0" * block) == block:
                    pass
    return filler


def one_line(done: subprocess.CompletedProcess) -> str:
    """The command's one `error:` line: exit 1, no warning before it, no traceback."""
    output = done.stdout + done.stderr
    assert done.returncode == 1, output[-3000:]
    assert "warning:" not in output and "Traceback" not in output, output[-3000:]
    (line,) = [x for x in done.stderr.splitlines() if x.startswith("error:")]
    return line


def test_a_full_tmpfs_ends_the_run_failed_in_one_line(tmpfs):
    """Store and output folder on one 3 MB disk: the model does not fit at the end. The cut
    file is removed at once, so the store has room to write FAILED."""
    disk = tmpfs(3 * MiB)
    store, out = disk / "mlruns", disk / "out"
    args = [*TINY, "trainer.max_epochs=2", *store_overrides(store), f"hydra.run.dir={out}"]
    done = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *args],
        cwd=ROOT,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    line = one_line(done)
    (run,) = runs_in(store)
    assert run.info.status == "FAILED", (run.info.status, line)
    assert f"MLflow run {run.info.run_id} marked FAILED: no space left" in line, line
    assert "free disk space" in line, line
    assert integrity(store / "mlflow.db") == "ok"
    assert not list(out.rglob("*.pt")), "a cut model file was left"
    for checkpoint in out.rglob("*.ckpt"):  # what is left loads
        assert zipfile.is_zipfile(checkpoint), checkpoint


def test_a_full_store_disk_says_running_then_sync_ends_it_failed(tmpfs, tmp_path):
    """Only the store's disk fills up (another program takes its last byte mid-run): the store
    cannot take the FAILED status, the line says so and names the sync that completes it."""
    store = tmpfs(4 * MiB) / "mlruns"
    store.mkdir()
    shutil.copy(_empty_store_db(), store / "mlflow.db")
    out, epochs = tmp_path / "out", 6
    args = [f"trainer.max_epochs={epochs}", "trainer.limit_train_batches=40", "data.batch_size=16"]
    with (tmp_path / "stderr.txt").open("w+") as err:  # not on the full disk
        process = subprocess.Popen(
            [sys.executable, str(ROOT / "train.py"), *TINY, *args, "tracking.log_model=false"]
            + [*store_overrides(store), f"hydra.run.dir={out}"],
            cwd=ROOT,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        )
        run_id = procs.run_id_of(procs.wait_for(process, "MLflow run "))
        procs.wait_for(process, "epoch 1/")
        filler = fill(store.parent)
        stdout, _ = process.communicate(timeout=300)
        err.seek(0)
        done = subprocess.CompletedProcess(process.args, process.returncode, stdout, err.read())

    line = one_line(done)
    client = MlflowClient(f"sqlite:///{store}/mlflow.db")
    assert client.get_run(run_id).info.status == "RUNNING", line
    assert f"MLflow run {run_id} failed: " in line and "stays RUNNING" in line, line
    assert f"runs.py sync {out}" in line, line

    filler.unlink()  # space again: the journal completes the record
    synced = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "runs.py"), "sync", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert synced.returncode == 0, synced.stdout + synced.stderr
    assert client.get_run(run_id).info.status == "FAILED"
    for key in ("train/acc", "val/acc"):
        steps = [m.step for m in client.get_metric_history(run_id, key)]
        assert len(steps) == epochs and len(set(steps)) == epochs, (key, steps)
    assert integrity(store / "mlflow.db") == "ok"


def test_only_cut_checkpoints_are_freed(tmp_path):
    """What a full disk cut short goes (it cannot load, and holds space); whole ones stay."""
    import torch

    from pipeline.tracking.space import free_partial

    whole, cut = tmp_path / "last.ckpt", tmp_path / "best-epoch=3.ckpt"
    torch.save({"w": torch.zeros(1000)}, whole)
    cut.write_bytes(whole.read_bytes()[:-100])  # the archive's directory never written
    assert free_partial(tmp_path) == [cut]
    assert whole.is_file() and not cut.exists()
    assert torch.load(whole, weights_only=True)["w"].shape == (1000,)
