"""Load: eight training processes on one fresh sqlite store, and the UI reading it while a sweep
writes into it too - one store, all at once, so the test pays its process start-ups once."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import procs
import pytest
from conftest import ROOT, free_port
from mlflow.tracking import MlflowClient

from pipeline.sweeps.common import ROLE_TAG
from pipeline.tracking import server as ts
from pipeline.training.resume import CHECKPOINT_DIR_TAG

JOBS = 8
STEPS, EPOCHS = 5, 2  # optimizer steps per epoch, epochs; train/loss is logged at every step
SMALL = [
    f"trainer.limit_train_batches={STEPS}",
    f"trainer.max_epochs={EPOCHS}",
    "trainer.log_every_n_steps=1",
    "trainer.limit_test_batches=2",
    "data.batch_size=32",
]
SWEEP_SEEDS = ["100", "101", "102", "103"]  # jobs of ~0.3 s: enough of them for the UI to see


def api(port: int, endpoint: str, body: dict) -> dict:
    """One call to the UI's REST API (what the browser's pages ask for)."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/api/2.0/mlflow/{endpoint}",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        assert response.status == 200
        return json.load(response)


def search(port: int) -> list[dict]:
    """The runs of every experiment, as the UI's run table lists them."""
    experiments = api(port, "experiments/search", {"max_results": 100})["experiments"]
    ids = [e["experiment_id"] for e in experiments]
    return api(port, "runs/search", {"experiment_ids": ids, "max_results": 1000}).get("runs", [])


def check_complete(client: MlflowClient, run) -> None:
    """FINISHED, and every metric point there, each once: train/loss at every optimizer step,
    the epoch metrics at each epoch's last step, the test metrics once."""
    assert run.info.status == "FINISHED"
    run_id = run.info.run_id
    keys = set(run.data.metrics)
    assert {"train/loss", "val/acc", "val/loss", "train/acc", "test/acc"} <= keys
    for key in sorted(keys - {"epoch"}):  # Lightning's own counter, logged with every step
        points = [m.step for m in client.get_metric_history(run_id, key)]
        if key == "train/loss":
            assert points == list(range(STEPS * EPOCHS)), key
        elif key.startswith("test/"):
            assert len(points) == 1, key
        else:
            assert points == [STEPS * (e + 1) - 1 for e in range(EPOCHS)], key


def check_clean(result: procs.Finished) -> None:
    assert result.returncode == 0, result.stderr[-3000:]
    assert "database is locked" not in result.stderr
    assert "Traceback" not in result.stderr, result.stderr[-3000:]


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_parallel_jobs_and_a_sweep_under_the_ui_on_one_fresh_store(tmp_path):
    store = tmp_path / "mlruns"
    started: list[subprocess.Popen] = []
    ui = None
    ui_log = (tmp_path / "ui.log").open("w")
    polls, polls_while_sweeping, sweep_runs_seen = 0, 0, set()
    try:
        # Eight jobs race to create the database and the experiment (the store does not exist).
        assert not store.exists()
        started += [procs.start(store, *SMALL, f"seed={seed}") for seed in range(JOBS)]
        procs.wait_for(started[0], "MLflow run ")  # the store exists now; the UI can open it
        # The UI as `make ui` runs it, then a sweep writing while the UI is read.
        port = free_port()
        mlflow = Path(sys.executable).parent / "mlflow"
        ui = subprocess.Popen(
            [str(mlflow), "server", "--backend-store-uri", f"sqlite:///{store}/mlflow.db",
             "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
            env=ts.server_env(), stdout=ui_log, stderr=subprocess.STDOUT,
            start_new_session=True,  # the server and its worker: one process group to stop
        )  # fmt: skip
        ts.wait_until_healthy(f"http://127.0.0.1:{port}", ui, timeout=300)
        sweep = procs.start(
            store, *SMALL, f"seed={','.join(SWEEP_SEEDS)}", f"hydra.sweep.dir={tmp_path}/sweep",
            prefix=[sys.executable, str(ROOT / "train.py"), "-m"],
        )  # fmt: skip
        started.append(sweep)
        # Poll the UI the whole time the jobs and the sweep write; any failed request fails.
        while any(p.poll() is None for p in started):
            sweeping = sweep.poll() is None
            listed = search(port)
            polls += 1
            if sweeping and sweep.poll() is None:
                polls_while_sweeping += 1
                sweep_runs_seen |= {
                    r["info"]["run_id"]
                    for r in listed
                    if any(t["key"] == "mlflow.parentRunId" for t in r["data"].get("tags", []))
                }
            time.sleep(0.25)  # the sweep's jobs exist for a few seconds only
        results = [procs.finish(p, timeout=60) for p in started]
        final = search(port)
    finally:
        for process in started:
            if process.poll() is None:
                process.kill()
                process.wait()
        if ui is not None:
            ts.stop(ui)
        ui_log.close()

    for result in results:
        check_clean(result)
    log = (tmp_path / "ui.log").read_text()
    assert "Traceback" not in log and "database is locked" not in log, log[-3000:]
    # The UI answered while the sweep wrote, and showed its jobs then.
    assert polls_while_sweeping >= 3 and sweep_runs_seen, (polls, polls_while_sweeping)
    assert len(final) == JOBS + 1 + len(SWEEP_SEEDS)  # and the sweep's parent
    assert {r["info"]["status"] for r in final} == {"FINISHED"}

    client = MlflowClient(f"sqlite:///{store}/mlflow.db")
    experiment = client.get_experiment_by_name("mnist-optimizers")
    runs = client.search_runs([experiment.experiment_id])
    trained = [r for r in runs if r.data.tags.get(ROLE_TAG) != "parent"]
    singles = [r for r in trained if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in trained if "mlflow.parentRunId" in r.data.tags]
    assert sorted(int(r.data.params["seed"]) for r in singles) == list(range(JOBS))
    assert sorted(r.data.params["seed"] for r in children) == SWEEP_SEEDS
    for run in trained:
        check_complete(client, run)
    # Jobs started in the same second still keep their checkpoints apart (resume reads them).
    assert len({r.data.tags[CHECKPOINT_DIR_TAG] for r in trained}) == len(trained)
