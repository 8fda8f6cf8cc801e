"""Faults inside a sweep: a diverged job does not stop the others; an interrupt marks the parent."""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path

import procs
import pytest
from conftest import ROOT, run_in_process, store_overrides
from mlflow.tracking import MlflowClient

MULTIRUN = [sys.executable, str(ROOT / "train.py"), "-m"]
TINY = ["trainer.max_epochs=1", "trainer.limit_train_batches=20", "trainer.log_every_n_steps=1"]


def sweep_runs(store):
    client = MlflowClient(f"sqlite:///{store}/mlflow.db")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    (parent,) = [r for r in runs if r.data.tags.get("sweep.role") == "parent"]
    return client, parent, [r for r in runs if r is not parent]


def trained_an_epoch(store: Path, count: int, timeout: float = 120) -> list:
    """The sweep's children once `count` of them have logged an epoch's val/acc."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _, _, children = sweep_runs(store)
        if sum("val/acc" in r.data.metrics for r in children) >= count:
            return children
        time.sleep(0.5)
    raise AssertionError(f"not {count} runs with an epoch in {timeout} s")


@pytest.mark.slow
def test_a_diverged_job_does_not_stop_the_sweep_and_is_reported(tmp_path, capsys):
    store = tmp_path / "mlruns"
    sweep_dir = tmp_path / "sweep"
    # In this process (no signal here): the sweep's jobs as a user's `train.py -m` runs them.
    run_in_process(
        "-m", *procs.QUICK, *store_overrides(store), "optimizer.lr=100,0.05", *TINY,
        f"hydra.sweep.dir={sweep_dir}",
    )  # fmt: skip
    stderr = capsys.readouterr().err
    assert "the run diverged and was stopped" in stderr, stderr[-3000:]
    client, parent, children = sweep_runs(store)
    by_lr = {r.data.params["optimizer.lr"]: r for r in children}
    assert by_lr["100"].info.status == "FAILED" and by_lr["100"].data.tags["diverged"] == "true"
    assert by_lr["0.05"].info.status == "FINISHED"  # the next job ran all the same
    assert parent.data.metrics["sweep/jobs"] == 2 and parent.data.metrics["sweep/diverged"] == 1
    report = (sweep_dir / "report" / "report.md").read_text()
    assert "DIVERGED" in report and by_lr["100"].info.run_name in report


@pytest.mark.slow
def test_an_interrupted_sweep_ends_its_parent_and_job_killed(tmp_path):
    store = tmp_path / "mlruns"
    long = ["trainer.max_epochs=1000", "data.batch_size=16", "trainer.limit_train_batches=50"]
    job = procs.start(store, "optimizer=sgd,adam", *long, f"hydra.sweep.dir={tmp_path}/s",
                      prefix=MULTIRUN)  # fmt: skip
    procs.wait_for(job, "epoch 1/")
    job.send_signal(signal.SIGTERM)
    result = procs.finish(job, since=time.monotonic())
    assert result.returncode == 128 + signal.SIGTERM, result.stderr[-3000:]
    client, parent, children = sweep_runs(store)
    assert parent.info.status == "KILLED"
    assert [(r.data.tags["optimizer"], r.info.status) for r in children] == [("sgd", "KILLED")]
    # The way on is the sweep's command, not the job's resume=<id>; the job is not "failed".
    assert "resume=" not in result.stderr + result.stdout
    (last,) = [line for line in result.stdout.splitlines() if line.startswith("Sweep KILLED")]
    assert "(1 jobs, 0 finished, 0 failed, 0 diverged, 1 interrupted)" in last
    command = ["optimizer=sgd,adam", *long, f"hydra.sweep.dir={tmp_path}/s"]
    assert last.endswith(" ".join(command)) and "with the same command: python " in last
    assert parent.data.metrics["sweep/interrupted"] == 1
    assert parent.data.metrics["sweep/failed"] == 0


@pytest.mark.slow
def test_joblib_workers_stop_when_the_sweep_process_is_killed(tmp_path):
    """SIGKILL of the sweep's process: its joblib workers end their jobs KILLED, then exit."""
    store = tmp_path / "mlruns"
    long = ["trainer.max_epochs=1000", "data.batch_size=16", "trainer.limit_train_batches=50"]
    job = procs.start(store, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
                      "optimizer=sgd,adam", *long, f"hydra.sweep.dir={tmp_path}/s",
                      prefix=MULTIRUN)  # fmt: skip
    procs.wait_for(job, "MLflow run ")
    procs.wait_for(job, "MLflow run ")  # both jobs' runs started (parallel jobs print no epochs)
    children = trained_an_epoch(store, 2)
    assert len(children) == 2, [(r.info.run_name, r.info.status) for r in children]
    workers = [int(r.data.tags["owner.pid"]) for r in children]
    job.kill()
    job.wait()

    def alive(pid: int) -> bool:
        try:
            return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
        except OSError:
            return False

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and any(alive(pid) for pid in workers):
        time.sleep(0.5)
    assert not any(alive(pid) for pid in workers)
    _, _, children = sweep_runs(store)
    assert sorted(r.info.status for r in children) == ["KILLED", "KILLED"]
