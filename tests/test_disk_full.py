"""A disk that fills up at any point of a run: one `error:` line, exit 1, the run FAILED (never
RUNNING), the store intact, every other run as it was, and the next command works.

The disk is full for real (tests/fsize.py: RLIMIT_FSIZE, so writes fail with the kernel's EFBIG,
no root needed): at run creation (the artifact root takes no config.yaml), during training (a
checkpoint grows past the limit) and while the finished run's artifacts are recorded.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ONE_EPOCH, ROOT, run_in_process, runs_in, store_overrides
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
