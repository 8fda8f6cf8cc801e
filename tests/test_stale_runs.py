"""Runs left RUNNING by a SIGKILLed process are found and marked; live ones are left alone."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys

import procs
import pytest
from conftest import ROOT, make_cfg
from mlflow.tracking import MlflowClient

from pipeline.cli.train import main
from pipeline.tracking import owners as runs


def test_owner_liveness_from_tags():
    mine = runs.owner_tags()
    assert runs.owner_alive(mine) is True
    reused = {**mine, runs.START_TAG: mine[runs.START_TAG] + "0"}  # same pid, other process
    assert runs.owner_alive(reused) is (False if mine[runs.START_TAG] else True)
    assert runs.owner_alive({**mine, runs.HOST_TAG: socket.gethostname() + "-other"}) is None
    assert runs.owner_alive({}) is None
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    assert runs.owner_alive({**mine, runs.PID_TAG: str(dead.pid)}) is False


@pytest.mark.slow
def test_sigkilled_run_is_warned_about_and_marked_killed(tmp_path, caplog):
    store = tmp_path / "mlruns"
    uri = f"sqlite:///{store}/mlflow.db"
    victim = procs.start(store, "data.batch_size=16", "trainer.max_epochs=1000")
    run_id = procs.run_id_of(procs.wait_for(victim, "epoch 1/"))
    client = MlflowClient(uri)
    try:
        # A job that is alive right now is not stale, whatever its status says.
        found = runs.running_runs(client)
        assert [r.info.run_id for r in found.alive] == [run_id] and not found.stale
    finally:
        victim.kill()  # SIGKILL: no handler runs, the run stays RUNNING
        procs.finish(victim)
    assert client.get_run(run_id).info.status == "RUNNING"

    # The next training run warns at start-up (and finishes normally).
    with caplog.at_level(logging.WARNING, logger="pipeline.tracking.owners"):
        main(make_cfg(tmp_path, "trainer.max_epochs=1", "trainer.limit_train_batches=2",
                      "tracking.log_model=false"))  # fmt: skip
    warnings = [r.getMessage() for r in caplog.records if r.name == "pipeline.tracking.owners"]
    assert len(warnings) == 1 and run_id in warnings[0]
    assert "python scripts/runs.py clean-stale" in warnings[0]

    clean = [sys.executable, str(ROOT / "scripts" / "runs.py"), "clean-stale", "--uri", uri]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(clean, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr
    assert "marked 1 stale run(s) KILLED" in result.stdout and run_id in result.stdout
    run = client.get_run(run_id)
    assert run.info.status == "KILLED" and run.data.tags[runs.ENDED_BY_TAG] == "clean-stale"
    statuses = sorted(r.info.status for r in client.search_runs([run.info.experiment_id]))
    assert statuses == ["FINISHED", "KILLED"]  # the finished run was not touched


def test_clean_stale_fails_the_model_a_dead_run_was_logging(tmp_path):
    """SIGKILL during log_model leaves MLflow's logged model PENDING: clean-stale ends it too."""
    from mlflow.entities import LoggedModelStatus

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    experiment = client.create_experiment("x", artifact_location=(tmp_path / "a").as_uri())
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    tags = {**runs.owner_tags(), runs.PID_TAG: str(dead.pid)}
    run = client.create_run(experiment, tags=tags)
    model = client.create_logged_model(experiment, name="model", source_run_id=run.info.run_id)
    clean = [sys.executable, str(ROOT / "scripts" / "runs.py"), "clean-stale", "--uri", uri]
    result = subprocess.run(clean, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert client.get_run(run.info.run_id).info.status == "KILLED"
    assert client.get_logged_model(model.model_id).status == LoggedModelStatus.FAILED
