"""The sqlite store: created whole or not at all, upgraded with a backup, refused when damaged;
two sweeps started together keep to their own folder and parent run."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import procs
import pytest
from conftest import ROOT, run_cli, store_overrides
from mlflow.tracking import MlflowClient

ONE_RUN = [
    *procs.QUICK,
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=2",
]
KILLS = 10  # kill points, spread over the time a fresh store's first use takes


def integrity(db: Path) -> str:
    with sqlite3.connect(db) as connection:
        return connection.execute("PRAGMA integrity_check").fetchone()[0]


def runs_of(db: Path) -> list:
    client = MlflowClient(f"sqlite:///{db}")
    return client.search_runs([e.experiment_id for e in client.search_experiments()])


def first_use(store: Path) -> subprocess.Popen:
    """A first run on the fresh `store`, returned once it starts using the store: its lock file
    appears (both when the store is created and when a run is created in it)."""
    lock = store / "mlflow.db.lock"
    first = procs.start(store, *ONE_RUN[len(procs.QUICK) :])
    deadline = time.monotonic() + 300
    while not lock.exists():
        assert first.poll() is None, f"exited {first.returncode} before using the store"
        assert time.monotonic() < deadline, "the store was never used"
        time.sleep(0.005)
    return first


def first_use_takes(store: Path) -> float:
    """Seconds from the lock file to the run's first line: creating the store's tables, the
    experiment and the run."""
    first = first_use(store)
    since = time.monotonic()
    procs.wait_for(first, "MLflow run ")
    seconds = time.monotonic() - since
    assert procs.finish(first).returncode == 0
    return seconds


def kill_then_rerun(store: Path, after: float) -> str | None:
    """SIGKILL a first run `after` s into the store's first use, run the same command again:
    what went wrong, or None."""
    first = first_use(store)
    time.sleep(after)
    first.send_signal(signal.SIGKILL)
    procs.finish(first)
    state = f"killed at +{after:.2f}s, left {sorted(p.name for p in store.iterdir())}"
    print(state, flush=True)
    rerun = run_cli(*ONE_RUN, *store_overrides(store), timeout=300)
    db = store / "mlflow.db"
    if rerun.returncode != 0:
        lines = rerun.stderr.strip().splitlines() or ["no output"]
        errors = [line for line in lines if "Error" in line or "error" in line] or lines
        return f"{state}: the next run exited {rerun.returncode}: {errors[-1][:300]}"
    if integrity(db) != "ok":
        return f"{state}: integrity_check says {integrity(db)}"
    if not any(r.info.status == "FINISHED" for r in runs_of(db)):
        return f"{state}: no FINISHED run"
    if any(p.name.startswith(".mlflow.db.") for p in store.iterdir()):
        return f"{state}: a half-built store was left: {sorted(store.iterdir())}"
    return None


@pytest.mark.slow
def test_a_first_run_killed_at_any_moment_leaves_a_store_the_next_run_can_use(tmp_path):
    stores = [tmp_path / f"store-{i}" / "mlruns" for i in range(KILLS + 2)]
    for store in stores:
        store.mkdir(parents=True)
    # Two at a time, as the kills run: the first use takes about 2-6 s on two busy cores.
    with ThreadPoolExecutor(2) as pool:
        span = max(pool.map(first_use_takes, stores[:2]))
        kills = [span * i / (KILLS - 1) for i in range(KILLS)]
        problems = [p for p in pool.map(kill_then_rerun, stores[2:], kills) if p]
    assert not problems, f"first use takes {span:.2f}s here; " + "\n\n".join(problems)


SWEEP = [
    "-m",
    "optimizer=sgd,adam",
    *procs.QUICK,
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=2",
    "hydra.callbacks.sweep.report=false",
]


@pytest.mark.slow
def test_two_sweeps_started_together_on_a_fresh_store_keep_apart(tmp_path):
    """Same second, same fresh store, default sweep folders (under paths.root_dir)."""
    store = tmp_path / "mlruns"
    args = [*SWEEP, *store_overrides(store), f"paths.root_dir={tmp_path}"]
    command = [sys.executable, str(ROOT / "train.py"), *args]
    # One runs its jobs in its own process, one in joblib's workers (which must find the same
    # folder: its name is resolved in the sweep's process, pid included). Two sweeps, not one
    # started twice: the same command again continues its sweep (docs/sweeps-and-reports.md).
    launchers = [["seed=1"], ["seed=2", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]]
    sweeps = [
        subprocess.Popen(
            [*command, *launcher], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        for launcher in launchers
    ]
    outputs = [p.communicate(timeout=600)[0].decode() for p in sweeps]
    for process, output in zip(sweeps, outputs, strict=True):
        assert process.returncode == 0, output[-3000:]
    assert integrity(store / "mlflow.db") == "ok"
    runs = runs_of(store / "mlflow.db")
    parents = [r for r in runs if r.data.tags.get("sweep.role") == "parent"]
    assert len(parents) == 2, [(r.info.run_name, r.data.tags) for r in runs]
    folders = {Path(p.data.tags["sweep.dir"]) for p in parents}
    assert len(folders) == 2, folders
    for parent in parents:
        assert parent.info.status == "FINISHED"
        folder = Path(parent.data.tags["sweep.dir"])
        assert (folder / "mlflow_parent_run_id").read_text() == parent.info.run_id
        kids = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
        assert sorted(r.data.tags["optimizer"] for r in kids) == ["adam", "sgd"]
        assert all(r.info.status == "FINISHED" for r in kids)
        assert parent.data.metrics["sweep/jobs"] == 2
        for kid in kids:  # each job's checkpoints are in its own sweep's folder
            assert Path(kid.data.tags["checkpoint.dir"]).is_relative_to(folder)
    assert len(runs) == 6


def test_a_corrupt_store_is_refused_and_left_as_it_is(tmp_path):
    store = tmp_path / "mlruns"
    store.mkdir()
    db = store / "mlflow.db"
    garbage = b"this is not a database\n" * 200
    db.write_bytes(garbage)
    proc = run_cli(*ONE_RUN, *store_overrides(store), timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-3000:]
    assert str(db) in lines[0] and f"mv {db} {db}.broken" in lines[0]
    assert db.read_bytes() == garbage
    assert sorted(p.name for p in store.iterdir()) == ["mlflow.db"]


# MLflow 2.x's newest schema: the revision before 3.0's logged-model tables (400f98739977).
OLD_REVISION = "0584bdc529eb"


def old_store(db: Path, upto: str = OLD_REVISION) -> None:
    """A store as an older MLflow made one, the way MLflow makes every store: its initial
    tables, then its own migrations up to `upto`; with an experiment of its own."""
    import sqlalchemy
    from alembic import command
    from mlflow.store.db.utils import _get_alembic_config
    from mlflow.store.tracking.dbmodels.initial_models import Base as InitialBase

    uri = f"sqlite:///{db}"
    engine = sqlalchemy.create_engine(uri)
    InitialBase.metadata.create_all(engine)
    config = _get_alembic_config(uri)
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, upto)
    engine.dispose()
    with sqlite3.connect(db) as connection:
        connection.execute(
            "INSERT INTO experiments (experiment_id, name, artifact_location, lifecycle_stage)"
            " VALUES (7, 'made-by-an-older-mlflow', '/tmp/old', 'active')"
        )
    assert revision(db) == upto


def revision(db: Path) -> str:
    with sqlite3.connect(db) as connection:
        return connection.execute("SELECT version_num FROM alembic_version").fetchone()[0]


@pytest.mark.slow
def test_an_older_store_is_backed_up_then_upgraded(tmp_path):
    from pipeline.tracking.mlflow_internals import latest_schema_revision

    store = tmp_path / "mlruns"
    store.mkdir()
    db = store / "mlflow.db"
    old_store(db)
    proc = run_cli(*ONE_RUN, *store_overrides(store), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (backup,) = store.glob("mlflow.db.bak-*")
    assert f"the old store is kept as {backup}" in proc.stdout
    assert revision(backup) == OLD_REVISION and integrity(backup) == "ok"
    assert revision(db) == latest_schema_revision() and integrity(db) == "ok"
    client = MlflowClient(f"sqlite:///{db}")
    assert client.get_experiment_by_name("made-by-an-older-mlflow").experiment_id == "7"
    assert [r.info.status for r in runs_of(db)] == ["FINISHED"]
    assert not list(store.glob(".mlflow.db.new-*"))


@pytest.mark.slow
def test_a_store_left_half_upgraded_is_refused_and_left_as_it_is(tmp_path):
    """What a kill inside MLflow's own migration leaves: a table of the next migration exists,
    the revision still says before it (MLflow then fails on 'table webhooks already exists')."""
    store = tmp_path / "mlruns"
    store.mkdir()
    db = store / "mlflow.db"
    old_store(db, upto="de4033877273")  # the next one, 1a0cddfcaa16, adds the webhooks table
    with sqlite3.connect(db) as connection:
        connection.execute("CREATE TABLE webhooks (webhook_id VARCHAR(256) PRIMARY KEY)")
    before = db.read_bytes()
    proc = run_cli(*ONE_RUN, *store_overrides(store), timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-3000:]
    assert "cannot be upgraded" in lines[0] and f"mv {db} {db}.broken" in lines[0]
    assert db.read_bytes() == before
    # nothing else: no run, no backup, no half-built copy
    assert sorted(p.name for p in store.iterdir()) == ["mlflow.db", "mlflow.db.lock"]


def test_a_half_made_store_is_refused_by_the_checks(tmp_path, cfg_factory):
    """Tables of MLflow's first step but no revision: a first run killed by the old code."""
    from pipeline.config.checks import validate_tracking
    from pipeline.errors import StoreError
    from pipeline.tracking.store import open_store

    db = tmp_path / "half" / "mlflow.db"
    db.parent.mkdir()
    with sqlite3.connect(db) as connection:
        connection.execute("CREATE TABLE experiments (experiment_id INTEGER PRIMARY KEY)")
        connection.execute("CREATE TABLE runs (run_uuid VARCHAR(32) PRIMARY KEY)")
    before = db.read_bytes()
    cfg = cfg_factory(f"tracking.uri=sqlite:///{db}")
    for attempt in (lambda: validate_tracking(cfg), lambda: open_store(f"sqlite:///{db}")):
        with pytest.raises(StoreError, match="only part of MLflow's tables") as caught:
            attempt()
        assert f"mv {db} {db}.broken" in str(caught.value)
    assert db.read_bytes() == before


def test_a_missing_store_is_built_aside_and_moved_into_place(tmp_path, monkeypatch):
    from pipeline.tracking import store as store_module

    db = tmp_path / "new" / "mlflow.db"
    moves = []
    real_move = store_module._move
    monkeypatch.setattr(store_module, "_move", lambda a, b: (moves.append((a, b)), real_move(a, b)))
    stale = db.parent / ".mlflow.db.new-1"  # left by a build that was killed
    stale.parent.mkdir()
    stale.write_bytes(b"half")
    client = store_module.open_store(f"sqlite:///{db}")
    assert [e.name for e in client.search_experiments()] == ["Default"]
    ((source, target),) = moves
    assert source.parent == db.parent and source.name.startswith(".mlflow.db.new-")
    assert target == db and integrity(db) == "ok"
    assert sorted(p.name for p in db.parent.iterdir()) == ["mlflow.db", "mlflow.db.lock"]
    store_module.open_store(f"sqlite:///{db}")  # an existing store is left as it is
    assert len(moves) == 1
