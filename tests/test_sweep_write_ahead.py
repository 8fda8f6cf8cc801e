"""The write-ahead rule for a sweep under SIGKILL: a two-job grid sweep killed at several
moments (before its first job's first checkpoint, inside a job, inside the next job), each
time started again with the same command until it ends, has the same MLflow record as an
unbroken sweep: the same children (one per job, by job key), the same params, every metric's
steps and values, nothing twice, the parent FINISHED with true counts, the database intact.

With tests/test_write_ahead.py (a single run killed at >= 10 moments, with and without a
locked store) this is the issue's fault-injection test for runs and sweeps. ~100 s on 2 busy
cores: four starts of the sweep besides the unbroken one, each importing the stack anew."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import procs
import pytest
from conftest import ROOT
from mlflow.entities import ViewType
from mlflow.tracking import MlflowClient
from test_write_ahead import fresh_store, record

from pipeline.sweeps.common import JOB_KEY_TAG
from pipeline.tracking.records import SPOOL_NAME, Spool

pytestmark = pytest.mark.slow

EPOCHS = 4
SWEEP = [
    "optimizer=sgd,adam",
    "data.batch_size=16",
    "trainer.limit_train_batches=12",
    f"trainer.max_epochs={EPOCHS}",
]
MULTIRUN = [sys.executable, str(ROOT / "train.py"), "-m"]
# Where each process is killed: after the n-th line (of this process) that starts with the
# marker, plus a delay. Each later start continues what the last one left.
MOMENTS = [
    ("MLflow run ", 1, 0.0),  # sgd's run exists, no checkpoint yet: deleted, run afresh
    ("epoch ", 2, 0.05),  # inside sgd: continued from its last checkpoint
    ("epoch ", 4, 0.05),  # sgd done on this start, inside adam's second epoch
]


def sweep(store: Path, folder: Path) -> subprocess.Popen:
    return procs.start(store, *SWEEP, f"hydra.sweep.dir={folder}", prefix=MULTIRUN)


def killed_at(
    store: Path, folder: Path, marker: str, count: int, delay: float
) -> tuple[bool, list[str]]:
    """One start of the sweep, SIGKILLed at the moment: (whether it ended first with exit 0,
    the lines it printed until then)."""
    process, lines = sweep(store, folder), []
    try:
        for line in process.stdout:
            lines.append(line)
            if sum(x.startswith(marker) for x in lines) == count:
                break
        else:
            return procs.finish(process).returncode == 0, lines
        time.sleep(delay)
        if process.poll() is not None:
            return procs.finish(process).returncode == 0, lines
        process.kill()
        process.wait()
        return False, lines
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.err_file.close()


def the_record(store: Path, folder: Path) -> tuple[dict, dict]:
    """(parent's status and counts, {job key: (params, metrics)}) of the sweep in `store`; the
    store's and the sweep folder's paths written as placeholders, so that two stores compare."""
    client = MlflowClient(f"sqlite:///{store}/mlflow.db")
    experiments = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(experiments, run_view_type=ViewType.ACTIVE_ONLY)
    (parent,) = [r for r in runs if r.data.tags.get("sweep.role") == "parent"]
    children = [r for r in runs if r is not parent]
    keys = [r.data.tags[JOB_KEY_TAG] for r in children]
    assert len(keys) == len(set(keys)), keys  # one run per job

    def placed(value: str) -> str:
        return value.replace(str(store), "<store>").replace(str(folder), "<sweep>")

    jobs = {}
    for run in children:
        assert run.info.status == "FINISHED", (run.info.run_name, run.info.status)
        params = {key: placed(value) for key, value in run.data.params.items()}
        # The job by its overrides (its job key hashes the store's path in too).
        jobs[placed(run.data.tags["overrides"])] = (params, record(client, run.info.run_id))
    counts = {key: value for key, value in parent.data.metrics.items() if key.startswith("sweep/")}
    return {"status": parent.info.status, **counts}, jobs


def test_a_sweep_killed_at_several_moments_records_what_an_unbroken_one_does(tmp_path):
    store, folder = fresh_store(tmp_path / "mlruns"), tmp_path / "unbroken"
    done = procs.finish(sweep(store, folder), timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    expected_parent, expected = the_record(store, folder)
    assert expected_parent["status"] == "FINISHED"
    assert expected_parent["sweep/jobs"] == expected_parent["sweep/finished"] == 2
    assert all(len(m["train/acc"]) == EPOCHS for _, m in expected.values())

    broken_store, broken = fresh_store(tmp_path / "mlruns-broken"), tmp_path / "broken"
    starts = []
    for marker, count, delay in MOMENTS:
        ended, lines = killed_at(broken_store, broken, marker, count, delay)
        assert not ended, f"the sweep ended before the moment {marker!r} x {count}"
        starts.append("".join(lines))
    done = procs.finish(sweep(broken_store, broken), timeout=300)  # once more, to its end
    assert done.returncode == 0, done.stderr[-3000:]
    # Each start went on as the moment says: sgd's first run (no checkpoint) deleted, sgd
    # continued, then adam continued while sgd is done.
    assert "Deleting the job's interrupted MLflow run" in starts[1], starts[1]
    assert "Continuing the job's interrupted MLflow run" in starts[2], starts[2]
    assert "Already done" in done.stdout and "Continuing" in done.stdout, done.stdout

    parent, jobs = the_record(broken_store, broken)
    assert parent == expected_parent  # FINISHED, 2 jobs, 2 finished, none failed or repeated
    assert jobs.keys() == expected.keys()
    for key, (params, metrics) in expected.items():
        assert jobs[key][0] == params, key
        assert jobs[key][1] == metrics, key  # every key's steps and values, nothing twice
    for spool in broken.rglob(SPOOL_NAME):  # every journal fully sent
        assert not Spool(spool).pending(), spool
    with sqlite3.connect(broken_store / "mlflow.db") as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
