"""The write-ahead rule under SIGKILL: a run killed at many moments, with and without another
process holding sqlite's exclusive lock on the store, then resumed (or synced, then resumed),
ends with the same record as an unbroken run: every metric's steps and values, nothing twice,
status FINISHED, the journal fully sent, the database intact."""

from __future__ import annotations

import random
import sqlite3
import subprocess
import sys
from pathlib import Path

import procs
import pytest
from conftest import ROOT, _empty_store_db
from mlflow.tracking import MlflowClient
from test_outage import hold_lock

from pipeline.tracking.records import SPOOL_NAME, Spool

pytestmark = pytest.mark.slow

EPOCHS = 20
ARGS = [
    "optimizer=adam",
    "data.batch_size=16",
    "trainer.limit_train_batches=12",
    f"trainer.max_epochs={EPOCHS}",
]
TIMED = {"epoch_time_s"}  # wall time: the same steps, not the same values


def record(client: MlflowClient, run_id: str) -> dict[str, list[tuple[int, float | None]]]:
    run = client.get_run(run_id)
    return {
        key: sorted(
            (m.step, None if key in TIMED else m.value)
            for m in client.get_metric_history(run_id, key)
        )
        for key in run.data.metrics
    }


def segment(store: Path, folder: Path, run_id: str | None, delay: float, locked: bool):
    """One process of the run: kill -9 `delay` s after an epoch line (the second one it prints
    when `locked`: the store is locked from the first; a new run's second, so that it has a
    checkpoint to resume from). Returns (run id, whether it ended)."""
    where = [f"hydra.run.dir={folder}"]
    process = procs.start(store, *ARGS, *where, *([f"resume={run_id}"] if run_id else []))
    holder, new = None, run_id is None
    try:
        try:
            lines = procs.wait_for(process, "MLflow run ")
        except AssertionError:
            process.err_file.seek(0)
            raise AssertionError(process.err_file.read()[-2000:]) from None
        run_id = run_id or procs.run_id_of(lines)
        for count in range((2 if locked else 1) + new):
            line = next((x for x in process.stdout if x.startswith("epoch ")), None)
            if line is None:  # it ended first
                return run_id, procs.finish(process).returncode == 0
            if locked and count == 0:
                holder = hold_lock(store / "mlflow.db", 120)
        try:
            process.wait(delay)
            return run_id, process.returncode == 0
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            return run_id, False
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.err_file.close()
        if holder is not None:
            holder.kill()
            holder.wait()


def sync(folder: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "runs.py"), "sync", str(folder)],
        capture_output=True,
        text=True,
        timeout=300,
    )


def fresh_store(path: Path) -> Path:
    path.mkdir()
    (path / "mlflow.db").write_bytes(_empty_store_db().read_bytes())
    return path


def killed_and_resumed(tmp_path: Path, name: str, delays: list[float], locked: bool) -> tuple:
    store = fresh_store(tmp_path / f"mlruns-{name}")
    folder, run_id, kills = tmp_path / name, None, 0
    for index, delay in enumerate(delays):
        run_id, ended = segment(store, folder, run_id, delay, locked and index % 2 == 0)
        status = MlflowClient(f"sqlite:///{store}/mlflow.db").get_run(run_id).info.status
        if ended or status == "FINISHED":  # killed after its end: nothing left to resume
            break
        kills += 1
        if locked and index % 4 == 2:  # sync what the store lacks before the next resume
            synced = sync(folder)
            assert synced.returncode == 0, synced.stdout + synced.stderr
    else:  # the last process goes to the end
        run_id, ended = segment(store, folder, run_id, 600.0, False)
        assert ended, f"the last resume of {run_id} failed"
    return store, folder, run_id, kills


def test_sigkill_at_many_moments_loses_nothing_and_repeats_nothing(tmp_path):
    chance = random.Random(25)
    store = fresh_store(tmp_path / "mlruns")
    unbroken = procs.start(store, *ARGS, f"hydra.run.dir={tmp_path / 'unbroken'}")
    done = procs.finish(unbroken, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    client = MlflowClient(f"sqlite:///{store}/mlflow.db")
    expected = record(client, procs.run_id_of(done.stdout.splitlines()))
    assert len(expected["train/acc"]) == EPOCHS

    kills = 0
    for name, locked in (("free", False), ("locked", True)):
        delays = [0.0] + [round(chance.uniform(0.0, 0.15), 2) for _ in range(7)]
        store, folder, run_id, killed = killed_and_resumed(tmp_path, name, delays, locked)
        kills += killed
        client = MlflowClient(f"sqlite:///{store}/mlflow.db")
        run = client.get_run(run_id)
        assert run.info.status == "FINISHED", (name, run.info.status)
        assert record(client, run_id) == expected, name  # same keys, steps, values; no repeats
        assert not Spool(folder / SPOOL_NAME).pending(), name  # the store has the whole journal
        with sqlite3.connect(store / "mlflow.db") as db:
            assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    assert kills >= 10, kills
