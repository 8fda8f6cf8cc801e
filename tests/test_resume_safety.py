"""A resume that cannot work leaves the run exactly as it was; no one else's run is taken over;
no checkpoint runs code. Each case drives the real entry point and compares the stored record
before and after."""

from __future__ import annotations

import os
import pickle
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from conftest import (
    ONE_EPOCH,
    ROOT,
    _empty_store_db,
    make_cfg,
    run_in_process,
    runs_in,
    store_overrides,
)
from mlflow.tracking import MlflowClient

from pipeline.tracking import owners
from pipeline.training.run import train

pytestmark = pytest.mark.slow

TINY = [*ONE_EPOCH, "tracking.log_model=false"]


def finished_run(root: Path) -> tuple[Path, str]:
    """A store with one FINISHED SGD run of one epoch."""
    store = root / "mlruns"
    assert run_in_process(*TINY, *store_overrides(store), f"hydra.run.dir={root / 'out'}") == 0
    (run,) = runs_in(store)
    return store, run.info.run_id


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> tuple[Path, str]:
    """Shared by the tests that must leave it unchanged."""
    return finished_run(tmp_path_factory.mktemp("finished"))


def record(store: Path, run_id: str) -> dict:
    """Everything stored about the run: status, params, tags, metric histories, artifacts."""
    client = MlflowClient(f"sqlite:///{store}/mlflow.db")
    run = client.get_run(run_id)
    histories = {
        key: [(m.step, m.value) for m in client.get_metric_history(run_id, key)]
        for key in run.data.metrics
    }
    artifacts = {}
    for item in client.list_artifacts(run_id):
        if not item.is_dir:
            path = client.download_artifacts(run_id, item.path, str(store.parent / "dl"))
            artifacts[item.path] = Path(path).read_bytes()
    return {
        "status": run.info.status,
        "end": run.info.end_time,
        "params": run.data.params,
        "tags": run.data.tags,
        "metrics": histories,
        "artifacts": artifacts,
    }


def refused(capsys, *args: str) -> str:
    """Runs train.py in this process; asserts exit 2 and one error line; returns it."""
    capsys.readouterr()
    assert run_in_process(*args) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.mark.parametrize(
    "overrides, says",
    [
        (["optimizer=adam"], "optimizer state does not fit optimizer=adam"),
        (["model.hidden_sizes=[]"], "holds another model than model=hidden_sizes=[]"),
    ],
)
def test_a_resume_that_cannot_work_leaves_the_finished_run_as_it_was(
    finished, overrides, says, capsys
):
    store, run_id = finished
    before = record(store, run_id)
    line = refused(
        capsys, f"resume={run_id}", "trainer.max_epochs=2", *overrides, *store_overrides(store)
    )
    assert says in line and f"resume={run_id}" in line
    assert record(store, run_id) == before


def test_a_checkpoint_of_another_run_is_refused(finished, tmp_path, capsys):
    """The run's checkpoint folder holds another run's last.ckpt (a shared folder)."""
    store, run_id = finished
    other = make_cfg(tmp_path, *TINY)
    train(other)
    client = MlflowClient(f"sqlite:///{store}/mlflow.db")
    folder = Path(client.get_run(run_id).data.tags["checkpoint.dir"])
    saved = folder / "last.ckpt.saved"
    shutil.copy(folder / "last.ckpt", saved)
    shutil.copy(tmp_path / "out" / "checkpoints" / "last.ckpt", folder / "last.ckpt")
    before = record(store, run_id)
    try:
        line = refused(capsys, f"resume={run_id}", "trainer.max_epochs=2", *store_overrides(store))
    finally:
        shutil.move(saved, folder / "last.ckpt")
    assert "belongs to MLflow run" in line
    assert record(store, run_id) == before


class Payload:
    """Unpickling this runs `touch <marker>`, as a hostile checkpoint would."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (subprocess.call, (["touch", str(self.marker)],))


def test_a_checkpoint_never_runs_code(tmp_path, capsys):
    marker = tmp_path / "pwned"
    hostile = tmp_path / "hostile.ckpt"
    with open(hostile, "wb") as file:
        pickle.dump({"state_dict": {}, "loops": {}, "x": Payload(marker)}, file)
    store = tmp_path / "mlruns"
    line = refused(capsys, *TINY, f"ckpt_path={hostile}", *store_overrides(store))
    assert "cannot be read safely" in line or "can read safely" in line
    assert not marker.exists()
    assert runs_in(store) == []


def test_a_torch_file_that_is_not_a_lightning_checkpoint(tmp_path, capsys):
    weights = tmp_path / "weights.pt"
    torch.save({"w": torch.zeros(3)}, weights)
    store = tmp_path / "mlruns"
    line = refused(capsys, *TINY, f"ckpt_path={weights}", *store_overrides(store))
    assert "not a Lightning checkpoint" in line
    assert runs_in(store) == []


def test_a_checkpoint_of_another_store_says_so(finished, tmp_path, capsys):
    store, run_id = finished
    client = MlflowClient(f"sqlite:///{store}/mlflow.db")
    ckpt = Path(client.get_run(run_id).data.tags["checkpoint.dir"]) / "last.ckpt"
    elsewhere = tmp_path / "other-store"
    elsewhere.mkdir()
    shutil.copy(_empty_store_db(), elsewhere / "mlflow.db")  # a store, without that run
    line = refused(capsys, *TINY, f"ckpt_path={ckpt}", *store_overrides(elsewhere))
    assert f"ckpt_path={ckpt} (of MLflow run {run_id}): no such run" in line
    assert "resume=" not in line.split(":")[0]


def test_a_running_run_of_another_host_needs_resume_force(tmp_path, capsys):
    store, run_id = finished_run(tmp_path)
    client = MlflowClient(f"sqlite:///{store}/mlflow.db")
    client.update_run(run_id, status="RUNNING")
    client.set_tag(run_id, "owner.host", socket.gethostname() + "-elsewhere")
    client.set_tag(run_id, "owner.heartbeat", f"{time.time():.0f}")
    before = record(store, run_id)
    line = refused(capsys, f"resume={run_id}", "trainer.max_epochs=2", *store_overrides(store))
    assert "heartbeat is fresh" in line and "resume_force=true" in line
    assert record(store, run_id) == before
    assert run_in_process(f"resume={run_id}", "trainer.max_epochs=2", "resume_force=true",
                          *store_overrides(store)) == 0  # fmt: skip
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["owner.host"] == socket.gethostname()  # this process took it over
    assert float(run.data.tags["owner.heartbeat"]) >= float(before["tags"]["owner.heartbeat"])


def test_two_resumes_at_once_exactly_one_trains(tmp_path):
    store = tmp_path / "mlruns"
    first = [*TINY[:-1], "trainer.limit_train_batches=20", "tracking.log_model=false"]
    assert run_in_process(*first, *store_overrides(store), f"hydra.run.dir={tmp_path}/o") == 0
    (run,) = runs_in(store)
    run_id = run.info.run_id
    command = [sys.executable, str(ROOT / "train.py"), f"resume={run_id}",
               "trainer.max_epochs=40", *store_overrides(store)]  # fmt: skip
    both = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for _ in range(2)]  # fmt: skip
    results = [(p.wait(timeout=600), p.stderr.read()) for p in both]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    loser = next(err for code, err in results if code == 2)
    assert "being written" in loser and "by pid" in loser  # the check, or the lock if both
    # passed the check together
    client = MlflowClient(f"sqlite:///{store}/mlflow.db")
    assert client.get_run(run_id).info.status == "FINISHED"
    steps = [m.step for m in client.get_metric_history(run_id, "val/acc")]
    assert len(steps) == len(set(steps)) == 40  # one writer: each epoch once


def test_a_resume_trains_with_the_optimizer_settings_it_is_given(tmp_path):
    """Lightning restores the optimizer's saved hyperparameters; `optimizer.lr=` on the
    resume's command line is what the resumed epochs train with, as the run records."""
    store, run_id = finished_run(tmp_path / "first")

    class LearningRate(pl.Callback):
        seen: list[float] = []

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            self.seen.append(trainer.optimizers[0].param_groups[0]["lr"])

    overrides = [f"resume={run_id}", "trainer.max_epochs=2", "optimizer.lr=0.5"]
    cfg = make_cfg(tmp_path, *overrides)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("pipeline.training.run.hydra_overrides", lambda: overrides)
        cfg.tracking.uri, cfg.tracking.artifact_root = (
            f"sqlite:///{store}/mlflow.db",
            f"{store}/artifacts",
        )
        train(cfg, callbacks=[LearningRate()])
    assert LearningRate.seen and set(LearningRate.seen) == {0.5}
    run = MlflowClient(f"sqlite:///{store}/mlflow.db").get_run(run_id)
    assert run.data.tags["resume.changed.optimizer.lr"] == "0.01 -> 0.5"


def test_a_run_whose_writer_lock_is_held_is_refused(finished, capsys):
    """The check of the run's status and its reopening are one step: the writer lock. A
    process holding it (here: this test) keeps any resume out, whatever the run's status says."""
    store, run_id = finished
    before = record(store, run_id)
    with owners.writer_lock(run_id, "test"):
        line = refused(capsys, f"resume={run_id}", "trainer.max_epochs=2", *store_overrides(store))
    assert f"is being written right now by pid {os.getpid()}" in line
    assert record(store, run_id) == before


def test_a_resume_against_a_missing_store_creates_nothing(tmp_path, capsys):
    """MLflow's client makes a sqlite store it is pointed at: a resume must only read one."""
    store = tmp_path / "nope" / "mlruns"
    run_id = "0123456789abcdef0123456789abcdef"
    args = [*TINY, *store_overrides(store), f"hydra.run.dir={tmp_path / 'out'}"]
    line = refused(capsys, *args, f"resume={run_id}")
    assert f"resume={run_id}: there is no MLflow store at {store}/mlflow.db" in line, line
    assert not (tmp_path / "nope").exists()
