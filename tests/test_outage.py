"""The store goes away mid-run: training goes on, nothing recorded is lost (tracking.writer).

Real processes and real stores: `python train.py` against an MLflow server on PostgreSQL that is
SIGKILLed after the first epoch and started again on the same database, then
`scripts/runs.py sync`; and against a sqlite store that another process holds locked
(`BEGIN EXCLUSIVE`) from the first epoch until after training has ended. Both are read back
through MlflowClient.
"""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import procs
import pytest
import runs  # scripts/runs.py (conftest puts scripts/ on the path)
from conftest import ROOT, _empty_store_db, free_port, store_overrides
from mlflow.tracking import MlflowClient

from pipeline import errors
from pipeline.exit_codes import ExitCode
from pipeline.tracking import outage
from pipeline.tracking import server as ts
from pipeline.tracking.records import MODEL_NAME, SPOOL_NAME, Spool

pytestmark = pytest.mark.slow

EPOCHS, BATCHES, LOG_EVERY = 40, 40, 10  # a few seconds of training, 160 train/loss points
TRAIN = [
    "data.source=embedded",
    f"trainer.max_epochs={EPOCHS}",
    f"trainer.limit_train_batches={BATCHES}",
    "trainer.limit_val_batches=2",
    "trainer.limit_test_batches=2",
    "tracking.flush_every_s=1",  # several writes fail while the store is away, not just one
]
OUTAGE_LINE = "does not take writes"


@dataclass
class Watched:
    returncode: int
    stdout: str
    stderr: str
    total_s: float  # start to exit
    epochs_s: float  # first epoch line to last epoch line
    last_epoch_at: float  # time.monotonic() of the last epoch line


def train(out: Path, *args: str) -> subprocess.Popen:
    err = open(out.parent / f"{out.name}-stderr.txt", "w+")  # noqa: SIM115
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "train.py"), *TRAIN, f"hydra.run.dir={out}", *args],
        cwd=ROOT,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        stdout=subprocess.PIPE,
        stderr=err,
        text=True,
    )
    process.err_file = err
    return process


def watch(process: subprocess.Popen, started: float, at_first_epoch=lambda: None) -> Watched:
    lines, first, last = [], None, None
    for line in process.stdout:
        lines.append(line)
        if line.startswith("epoch "):
            last = time.monotonic()
            if first is None:
                first = last
                at_first_epoch()
    done = procs.finish(process, timeout=600)
    assert first is not None, f"no epoch line (exit {done.returncode}): {done.stderr[-3000:]}"
    total = time.monotonic() - started
    return Watched(done.returncode, "".join(lines), done.stderr, total, last - first, last)


def counts(client: MlflowClient, run_id: str) -> dict[str, int]:
    keys = client.get_run(run_id).data.metrics
    return {key: len(client.get_metric_history(run_id, key)) for key in keys}


def check_complete(client: MlflowClient, run_id: str) -> dict[str, int]:
    """FINISHED, every epoch's and every logged step's point, the checkpoints and the figure."""
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    found = counts(client, run_id)
    for key in ("val/acc", "val/loss", "train/acc", "train/loss_epoch", "epoch_time_s"):
        assert found[key] == EPOCHS, (key, found)
    train_steps = [m.step for m in client.get_metric_history(run_id, "train/loss")]
    assert sorted(train_steps) == list(range(LOG_EVERY - 1, EPOCHS * BATCHES, LOG_EVERY))
    assert found["test/acc"] == 1
    names = {a.path for a in client.list_artifacts(run_id)}
    assert {"checkpoints", "curves.png", "config.yaml"} <= names, names
    assert client.list_artifacts(run_id, "checkpoints"), "no checkpoint logged"
    return found


def sync(target: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "runs.py"), "sync", str(target)],
        capture_output=True,
        text=True,
        timeout=300,
    )


def start_server(database, folder: Path, port: int) -> subprocess.Popen:
    """`mlflow server` as scripts/server.py runs it, in its own process group."""
    command = ts.mlflow_server_command(database.uri, folder / "artifacts", "127.0.0.1", port, 1)
    with (folder / "server.log").open("a") as log:
        process = subprocess.Popen(
            command, env=ts.server_env(database.password), stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    try:
        ts.wait_until_healthy(f"http://127.0.0.1:{port}", process, timeout=240)
    except errors.ServerError as error:
        ts.stop(process)
        pytest.fail(f"{error}\n{(folder / 'server.log').read_text()[-3000:]}")
    return process


def kill(process: subprocess.Popen) -> None:
    os.killpg(process.pid, signal.SIGKILL)  # the server and its workers die, nothing cleans up
    process.wait(30)


def test_server_killed_mid_run_loses_nothing(postgres_database, tmp_path, capsys):
    database = postgres_database
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = start_server(database, tmp_path, port)
    store = ["tracking=server", f"tracking.uri={url}", "tracking.log_model=false"]
    try:
        # An unbroken run first: how long training takes here, now.
        started = time.monotonic()
        unbroken = watch(train(tmp_path / "unbroken", *store), started)
        assert unbroken.returncode == 0, unbroken.stderr[-3000:]

        # The same run; the server is killed at its first epoch line.
        started = time.monotonic()
        broken = watch(train(tmp_path / "broken", *store), started, lambda: kill(server))
    finally:
        ts.stop(server)
    # Training went on at full speed (a blocking write would stall it for minutes: MLflow's
    # client retries 7 times with backoff); the end waited at most DOWN_WAIT_S for the server.
    # The margins are for a busy machine, whose load can change between the two runs.
    timing = f"unbroken {unbroken.total_s:.1f} s ({unbroken.epochs_s:.1f} s of epochs), "
    timing += f"server killed {broken.total_s:.1f} s ({broken.epochs_s:.1f} s)"
    assert broken.epochs_s < 3 * unbroken.epochs_s + 2, timing
    assert broken.total_s < 2 * unbroken.total_s + outage.DOWN_WAIT_S, timing
    print(timing)
    assert broken.returncode == ExitCode.TRACKING_INCOMPLETE, broken.stderr[-3000:]
    # Told once, in one line, and at the end what is missing and how to send it.
    assert broken.stderr.count(OUTAGE_LINE) == 1, broken.stderr[-3000:]
    assert "Retrying" not in broken.stderr and "Traceback" not in broken.stderr
    spooled = tmp_path / "broken" / SPOOL_NAME
    hint = f"python scripts/runs.py sync {spooled.parent}"
    (final,) = [line for line in broken.stderr.splitlines() if "record is incomplete" in line]
    assert "the final status FINISHED" in final and "artifact" in final and hint in final, final
    assert "metric batch" in final, final
    run_id = procs.run_id_of(broken.stdout.splitlines())

    server = start_server(database, tmp_path, port)  # the same database, the same address
    try:
        client = MlflowClient(url)
        assert client.get_run(run_id).info.status == "RUNNING"  # left as it was
        assert spooled.is_file()
        synced = sync(spooled.parent)
        assert synced.returncode == 0, synced.stderr[-3000:]
        assert "the final status FINISHED" in synced.stdout, synced.stdout
        complete = check_complete(client, run_id)
        assert complete == counts(client, procs.run_id_of(unbroken.stdout.splitlines()))
        # Again, in this process (the same code as the command, without another start-up):
        # nothing is sent twice.
        assert runs.sync(spooled, None) == 0
        assert "nothing to send" in capsys.readouterr().out
        assert counts(client, run_id) == complete
    finally:
        ts.stop(server)


def hold_lock(db: Path, seconds: float) -> subprocess.Popen:
    """Another process holds sqlite's exclusive lock on `db` for `seconds`."""
    code = (
        "import sqlite3, sys, time\n"
        "db = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
        "db.execute('BEGIN EXCLUSIVE')\n"
        "print('locked', flush=True)\n"
        "time.sleep(float(sys.argv[2]))\n"
        "db.execute('COMMIT')\n"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", code, str(db), str(seconds)], stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout.readline().strip() == "locked"
    return holder


def test_a_long_sqlite_lock_leaves_nothing_running_and_loses_nothing(tmp_path):
    # Longer than MLflow's sqlite busy timeout (20 s), so writes fail, and past training's end.
    lock_s = 25.0
    store = tmp_path / "mlruns"
    store.mkdir()
    shutil.copy(_empty_store_db(), store / "mlflow.db")
    held: dict[str, object] = {}

    def lock() -> None:
        held["since"] = time.monotonic()
        held["holder"] = hold_lock(store / "mlflow.db", lock_s)

    run = train(tmp_path / "out", *store_overrides(store))  # the model too, after the lock
    done = watch(run, time.monotonic(), lock)
    exited = time.monotonic() - held["since"]
    held["holder"].wait(60)
    trained = done.last_epoch_at - held["since"]
    print(f"lock held {lock_s:.0f} s: last epoch {trained:.1f} s in, exit {exited:.1f} s in")
    # Training did not wait for the lock: its last epoch came before the lock was released.
    assert trained < lock_s - 2, done
    assert exited > lock_s, done  # ... and the end waited for it, within LOCK_WAIT_S
    assert done.returncode == 0, done.stderr[-3000:]  # the end waited for the lock, then wrote
    assert done.stderr.count(OUTAGE_LINE) == 1, done.stderr[-3000:]
    assert "database is locked" in done.stderr and "Traceback" not in done.stderr
    assert "takes writes again" in done.stderr
    client = MlflowClient(f"sqlite:///{store}/mlflow.db")
    run_id = procs.run_id_of(done.stdout.splitlines())
    check_complete(client, run_id)
    (model,) = client.search_logged_models([client.get_run(run_id).info.experiment_id])
    assert model.source_run_id == run_id and model.name == "model"
    assert not (tmp_path / "out" / MODEL_NAME).exists()  # sent: no copy left behind
    # Nothing is stuck RUNNING, and the spool says every record was sent.
    with sqlite3.connect(store / "mlflow.db") as db:
        assert db.execute("SELECT count(*) FROM runs WHERE status = 'RUNNING'").fetchone() == (0,)
    assert not Spool(tmp_path / "out" / SPOOL_NAME).pending()


SWEEP = [
    "-m",
    "optimizer=sgd,adam",
    "data.source=embedded",
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=2",
    "trainer.limit_val_batches=2",
    "trainer.limit_test_batches=2",
    "tracking.log_model=false",
    "hydra.callbacks.sweep.report=false",
]


def sweep_with_its_end_locked(tmp_path, monkeypatch, lock_s: float):
    """A sweep whose store another process locks (`BEGIN EXCLUSIVE`) for `lock_s` from the
    moment its jobs are done until after the parent's end is due; (exit, parent runs)."""
    from conftest import run_in_process, runs_in

    from pipeline.sweeps.callback import SweepRun

    store = tmp_path / "mlruns"
    store.mkdir()
    shutil.copy(_empty_store_db(), store / "mlflow.db")
    finish, holders = SweepRun.finish, []

    def locked_finish(self, *args, **kwargs):
        holders.append(hold_lock(store / "mlflow.db", lock_s))
        return finish(self, *args, **kwargs)

    monkeypatch.setattr(SweepRun, "finish", locked_finish)
    status = run_in_process(*SWEEP, *store_overrides(store), f"paths.root_dir={tmp_path}")
    for holder in holders:
        holder.wait(lock_s + 60)
    parents = [r for r in runs_in(store) if r.data.tags.get("sweep.role") == "parent"]
    return status, parents


def test_a_sweep_parent_waits_out_a_locked_store(tmp_path, monkeypatch, capsys):
    # Longer than MLflow's sqlite busy timeout (20 s): its reads and writes fail, then retry.
    status, (parent,) = sweep_with_its_end_locked(tmp_path, monkeypatch, lock_s=25.0)
    out = capsys.readouterr()
    assert status == 0, out.err[-3000:]
    assert parent.info.status == "FINISHED"
    assert parent.data.metrics["sweep/jobs"] == 2  # the counts, written once the lock went
    assert "Sweep FINISHED" in out.out and "Traceback" not in out.err


def test_a_sweep_parent_whose_status_cannot_be_written_says_so(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(outage, "LOCK_WAIT_S", 1.0)  # gives up long before the lock goes
    status, (parent,) = sweep_with_its_end_locked(tmp_path, monkeypatch, lock_s=75.0)
    err = capsys.readouterr().err
    assert status == ExitCode.TRACKING_INCOMPLETE, err[-3000:]
    assert parent.info.status == "RUNNING"  # ... and the user is told, with the way out
    (line,) = [line for line in err.splitlines() if line.startswith("error:")]
    assert f"could not mark MLflow run {parent.info.run_id} FAILED" in line
    assert "database is locked" in line and "clean-stale" in line
