"""One job, one run (issue 25, cases 5 and 6): the same sweep started twice at once on one fresh
sqlite store runs each job once, in one parent whose final status and counts are the truth; two
`compare.py` at once on one sweep write two different reports. Real concurrent processes."""

from __future__ import annotations

import re
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import ROOT, runs_in, store_overrides
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.slow

EPOCHS = 2
SWEEP = [
    "-m",
    "optimizer=sgd,adam,rmsprop",
    "data.source=embedded",
    f"trainer.max_epochs={EPOCHS}",
    "trainer.limit_train_batches=10",
    "trainer.limit_val_batches=2",
    "trainer.limit_test_batches=2",
    "tracking.log_model=false",
    "tracking.log_curves=false",
]


def start(script: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(ROOT / script), *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def together(*commands: list[str], timeout: float = 600) -> list[tuple[int, str]]:
    """Start every command at once; (exit status, output) of each."""
    procs = [start(*command) for command in commands]
    return [(p.wait(timeout), p.stdout.read()) for p in procs]


@pytest.fixture(scope="module")
def twice(tmp_path_factory) -> tuple[Path, list[tuple[int, str]]]:
    """The same sweep, started twice at once on a store that does not exist yet."""
    root = tmp_path_factory.mktemp("twice")
    store = root / "mlruns"
    args = [*SWEEP, *store_overrides(store)]
    results = together(
        ["train.py", *args, f"hydra.sweep.dir={root / 'a'}"],
        ["train.py", *args, f"hydra.sweep.dir={root / 'b'}"],
    )
    return store, results


def test_the_same_sweep_twice_at_once_runs_each_job_once(twice):
    store, results = twice
    for code, out in results:
        assert code == 0 and "Traceback" not in out and "RunBusy" not in out, out
    outputs = "\n".join(out for _, out in results)
    assert "no longer exist" not in outputs  # a parent left to the other is not judged stale
    runs = runs_in(store)
    parents = [r for r in runs if r.data.tags.get("sweep.role") == "parent"]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and len(runs) == 4
    (parent,) = parents
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parent.info.run_id}
    assert sorted(c.data.tags["optimizer"] for c in children) == ["adam", "rmsprop", "sgd"]
    assert len({c.data.tags["sweep.job_key"] for c in children}) == 3
    started = re.findall(r"MLflow run (\w+) started", outputs)
    assert sorted(started) == sorted(c.info.run_id for c in children)  # each trained once
    skipped = re.findall(r"^Already (?:running|done): .*$", outputs, re.M)
    assert len(started) + len(skipped) == 6, outputs  # every job of each process: run or said
    client = MlflowClient(f"sqlite:///{store}/mlflow.db")
    for child in children:
        assert child.info.status == "FINISHED"
        for key in ("val/acc", "train/acc"):
            steps = [m.step for m in client.get_metric_history(child.info.run_id, key)]
            assert len(steps) == EPOCHS and len(set(steps)) == EPOCHS
    # The parent: ended by the last process, with the counts of what ran.
    assert parent.info.status == "FINISHED"
    assert {k: parent.data.metrics[f"sweep/{k}"] for k in ("jobs", "finished", "failed")} == {
        "jobs": 3,
        "finished": 3,
        "failed": 0,
    }
    summaries = re.findall(r"^Sweep FINISHED: .*\(3 jobs, 3 finished, 0 failed", outputs, re.M)
    left = outputs.count("another process still runs this sweep")
    assert len(summaries) >= 1 and len(summaries) + left == 2, outputs
    if left:  # the two ran side by side: the parent was ended once
        assert len(client.get_metric_history(parent.info.run_id, "sweep/jobs")) == 1
    check = sqlite3.connect(store / "mlflow.db").execute("PRAGMA integrity_check").fetchone()
    assert check == ("ok",)


def test_two_compares_at_once_write_two_reports(twice, tmp_path):
    store, _ = twice
    client = MlflowClient(f"sqlite:///{store}/mlflow.db")
    (parent,) = [r for r in runs_in(store) if r.data.tags.get("sweep.role") == "parent"]
    before = {a.path for a in client.list_artifacts(parent.info.run_id)}
    common = ["--sweep", parent.info.run_id, *store_overrides(store)]
    results = together(
        ["scripts/compare.py", "--out", str(tmp_path / "one"), *common],
        ["scripts/compare.py", "--out", str(tmp_path / "two"), *common],
    )
    names = []
    for code, out in results:
        assert code == 0 and "Traceback" not in out, out
        (name,) = re.findall(r"artifacts (report(?:-\d+)?)/\)", out)
        names.append(name)
    assert len(set(names)) == 2 and not set(names) & before
    after = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert after == before | set(names)
    for name in names:
        files = {Path(a.path).name for a in client.list_artifacts(parent.info.run_id, name)}
        assert {"report.md", "report.csv", "report.png"} <= files


def hold_claim(uri: str, storage: str | None) -> subprocess.Popen:
    """Another process that takes the claim of job `k` of parent `p`, says so, and waits."""
    code = (
        "import sys, time\n"
        "from pipeline.sweeps.claims import job_claim\n"
        f"with job_claim({uri!r}, 'p', 'k', {storage!r}) as holder:\n"
        "    print('held' if holder is None else 'busy', flush=True)\n"
        "    time.sleep(600)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def claims_behave(uri: str, storage: str | None, where: Callable[[], int]) -> None:
    """A claim held by another process is refused until that process dies (SIGKILL); of the
    processes of a sweep, only the last to finish ends the parent. `where()` counts the locks
    held where they should be."""
    from pipeline.sweeps import claims

    other = hold_claim(uri, storage)
    try:
        assert where() >= 1
        with claims.job_claim(uri, "p", "k", storage) as holder:
            assert holder is not None
        with claims.job_claim(uri, "p", "other job", storage) as holder:
            assert holder is None
    finally:
        other.kill()
        other.wait()
    with claims.job_claim(uri, "p", "k", storage) as holder:
        assert holder is None  # the dead process's claim went with it
    first, second = claims.Membership(uri, "p", storage), claims.Membership(uri, "p", storage)
    first.join()
    second.join()
    assert not first.last()  # the second still runs jobs
    assert second.last()
    second.release()
    again = claims.Membership(uri, "p", storage)
    again.join()
    assert again.last()
    again.release()


def test_claims_next_to_a_sqlite_store(tmp_path):
    folder = tmp_path / "mlruns" / "mlflow.db.claims"
    claims_behave(f"sqlite:///{folder.parent}/mlflow.db", None, lambda: len(list(folder.glob("*"))))


def test_claims_of_a_server_store_in_postgresql(postgres_database, monkeypatch):
    """With a server store and tracking.optuna_storage on PostgreSQL, the claims are advisory
    locks there, seen by workers on every host."""
    monkeypatch.setenv("PGPASSWORD", postgres_database.password)
    import sqlalchemy

    engine = sqlalchemy.create_engine(postgres_database.uri, poolclass=sqlalchemy.pool.NullPool)

    def advisory() -> int:
        with engine.connect() as connection:
            query = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted"
            return connection.execute(sqlalchemy.text(query)).scalar()

    claims_behave("http://127.0.0.1:9", postgres_database.uri, advisory)
    assert advisory() == 0  # every lock went with its connection
