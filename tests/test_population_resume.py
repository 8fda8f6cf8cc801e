"""A population under faults behaves as a single run: SIGTERM or SIGKILL at a random moment
inside an epoch, then the same sweep command, ends with every member's record equal to an
unbroken population sweep's (float64: every value to 1e-9, the same steps, nothing twice);
a diverged member stays FAILED across the resume; a tampered checkpoint is refused with one
line and exit 2; `runs.py sync` completes the members' runs from the population's journal."""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import procs
import pytest
import torch
from conftest import ROOT, run_in_process, store_overrides
from mlflow.tracking import MlflowClient

from pipeline.population.module import PopulationModule
from pipeline.tracking.records import SPOOL_NAME, Spool

pytestmark = pytest.mark.slow

# 3 members x 3 epochs of 12 steps, 2 steps a group (6 groups an epoch), in float64.
GRID = [
    "hydra/launcher=population",
    "optimizer=adam",
    "optimizer.lr=0.001,0.003",
    "seed=1,2",
    "trainer.precision=64-true",
    "trainer.max_epochs=3",
    "trainer.limit_train_batches=12",
    "trainer.log_every_n_steps=1",
    "data.batch_size=16",
    "data.samples_per_group=32",
    "tracking.log_curves=false",
]
QUICK = ["data.source=embedded", "tracking.log_model=false", "trainer.limit_val_batches=2"]
TIMED = {"epoch_time_s"}  # wall time: the same steps, not the same values


def sweep_args(tmp_path: Path, *extra: str) -> list[str]:
    store = tmp_path / "mlruns"
    return ["-m", *GRID, *QUICK, *extra, *store_overrides(store), f"hydra.sweep.dir={tmp_path}/sw"]


def members(tmp_path: Path) -> dict[str, object]:
    """The sweep's member runs by job (lr, seed), each with its whole record."""
    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    out = {}
    for run in runs:
        if "population" not in run.data.tags:
            continue
        record = {
            key: sorted(
                (m.step, None if key in TIMED else m.value)
                for m in client.get_metric_history(run.info.run_id, key)
            )
            for key in run.data.metrics
        }
        params = run.data.params
        out[params["optimizer.lr"], params["seed"]] = (run, record)
    return out


def assert_same(ours: dict, theirs: dict) -> None:
    assert set(ours) == set(theirs) and len(ours) == 4
    for job, (run, record) in ours.items():
        other_run, other = theirs[job]
        assert run.info.status == other_run.info.status, job
        assert set(record) == set(other), job
        for key, points in record.items():
            assert [s for s, _ in points] == [s for s, _ in other[key]], (job, key)  # no repeats
            for (step, a), (_, b) in zip(points, other[key], strict=True):
                assert (a is None and b is None) or abs(a - b) <= 1e-9, (job, key, step, a, b)


@pytest.fixture(scope="module")
def unbroken(tmp_path_factory) -> dict:
    tmp_path = tmp_path_factory.mktemp("unbroken")
    assert run_in_process(*sweep_args(tmp_path)) == 0
    runs = members(tmp_path)
    assert all(r.info.status == "FINISHED" for r, _ in runs.values())
    assert len(next(iter(runs.values()))[1]["train/loss"]) == 36
    return runs


def signal_at_group(monkeypatch, group: int, signum: int = signal.SIGTERM) -> None:
    original, calls = PopulationModule.training_step, []

    def step(self, batch, index):
        original(self, batch, index)
        calls.append(index)
        if len(calls) == group:
            os.kill(os.getpid(), signum)

    monkeypatch.setattr(PopulationModule, "training_step", step)


def test_sigterm_mid_epoch_then_the_same_command_equals_the_unbroken_sweep(
    tmp_path, monkeypatch, capsys, unbroken
):
    signal_at_group(monkeypatch, 9)  # epoch 2's third group of six
    assert run_in_process(*sweep_args(tmp_path)) == 143
    err = capsys.readouterr().err
    assert "the same command resumes them from its checkpoint" in err
    killed = members(tmp_path)
    assert {r.info.status for r, _ in killed.values()} == {"KILLED"}
    # The checkpoint counts 9 groups (18 steps): each member's journal has exactly those.
    assert all(len(rec["train/loss"]) == 18 for _, rec in killed.values())
    checkpoint = tmp_path / "sw" / "0" / "population" / "checkpoints" / "last.ckpt"
    assert {r.data.tags["checkpoint.dir"] for r, _ in killed.values()} == {str(checkpoint.parent)}

    monkeypatch.undo()
    assert run_in_process(*sweep_args(tmp_path)) == 0
    out = capsys.readouterr().out
    assert out.count("from its population's checkpoint") == 4
    resumed = members(tmp_path)
    assert {r.info.run_id for r, _ in resumed.values()} == {
        r.info.run_id for r, _ in killed.values()
    }  # the same runs went on
    assert all(r.data.tags["resume.count"] == "1" for r, _ in resumed.values())
    assert_same(resumed, unbroken)


def kill_after_checkpoint(tmp_path: Path, delay: float | None, signum: int) -> int:
    """One process of the sweep, killed `delay` s after a checkpoint newer than any before
    exists (None: not killed); returns its exit status (0: it ended first)."""
    store = tmp_path / "mlruns"
    store.mkdir(exist_ok=True)
    multirun = [sys.executable, str(ROOT / "train.py"), "-m"]
    process = procs.start(store, *GRID, f"hydra.sweep.dir={tmp_path}/sw", prefix=multirun)
    ckpt = tmp_path / "sw" / "0" / "population" / "checkpoints" / "last.ckpt"
    before = ckpt.stat().st_mtime_ns if ckpt.exists() else 0
    try:
        deadline = time.monotonic() + 300
        while delay is not None and process.poll() is None and time.monotonic() < deadline:
            if ckpt.exists() and ckpt.stat().st_mtime_ns != before:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(delay)
                if process.poll() is None:
                    process.send_signal(signum)
                break
            time.sleep(0.02)
        process.communicate(timeout=300)
        return process.returncode
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.err_file.close()


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM])
def test_killed_at_random_moments_then_resumed_equals_the_unbroken_sweep(
    tmp_path, signum, unbroken
):
    chance = random.Random(26 + signum)
    kills = 0
    for _ in range(2):
        code = kill_after_checkpoint(tmp_path, round(chance.uniform(0.0, 0.15), 2), signum)
        if code == 0:
            break
        kills += 1
    else:  # the last process goes to the end
        assert kill_after_checkpoint(tmp_path, None, signum) == 0
    assert kills >= 1
    resumed = members(tmp_path)
    assert all(int(r.data.tags["resume.count"]) >= 1 for r, _ in resumed.values())
    assert_same(resumed, unbroken)
    journal = tmp_path / "sw" / "0" / "population" / SPOOL_NAME
    assert not Spool(journal).pending()  # the store has the whole journal


def test_a_diverged_member_stays_failed_across_the_resume(tmp_path, monkeypatch, capsys):
    grid = [*GRID[:2], "optimizer.lr=0.001,1e6", *GRID[3:]]  # lr=1e6 diverges in epoch 1

    def args(folder: Path) -> list[str]:
        store = folder / "mlruns"
        return ["-m", *grid, *QUICK, *store_overrides(store), f"hydra.sweep.dir={folder}/sw"]

    assert run_in_process(*args(tmp_path / "unbroken")) == 0
    expected = members(tmp_path / "unbroken")
    signal_at_group(monkeypatch, 9)
    assert run_in_process(*args(tmp_path)) == 143
    killed = members(tmp_path)
    statuses = sorted(r.info.status for r, _ in killed.values())
    assert statuses == ["FAILED", "FAILED", "KILLED", "KILLED"]
    monkeypatch.undo()
    capsys.readouterr()
    assert run_in_process(*args(tmp_path)) == 0
    out = capsys.readouterr().out
    assert out.count("Already done: MLflow run") == 2 and out.count("diverged; not run") == 2
    resumed = members(tmp_path)
    for job, (run, _) in resumed.items():
        before = killed[job][0]
        assert run.info.run_id == before.info.run_id
        if before.info.status == "FAILED":  # untouched: not reopened, no new points
            assert run.data.tags["diverged"] == "true" and "resume.count" not in run.data.tags
            assert run.info.end_time == before.info.end_time
            assert run.data.tags == before.data.tags
    assert_same(resumed, expected)


def test_a_tampered_checkpoint_is_refused_and_the_runs_stay_as_they_are(
    tmp_path, monkeypatch, capsys
):
    signal_at_group(monkeypatch, 3)
    assert run_in_process(*sweep_args(tmp_path)) == 143
    monkeypatch.undo()
    before = {job: (r.info.status, rec) for job, (r, rec) in members(tmp_path).items()}
    # A member alone cannot go on: its checkpoint holds the whole population.
    member = next(iter(members(tmp_path).values()))[0].info.run_id
    store = store_overrides(tmp_path / "mlruns")
    capsys.readouterr()
    assert run_in_process(f"resume={member}", *store) == 2
    err = capsys.readouterr().err
    assert f"error: resume={member}: the run is a member of a population" in err
    path = tmp_path / "sw" / "0" / "population" / "checkpoints" / "last.ckpt"
    original = path.read_bytes()
    checkpoint = torch.load(path, weights_only=True)
    weights = checkpoint["state_dict"]
    name = next(iter(weights))
    weights[name] = weights[name][:3]  # a member's weights gone
    torch.save(checkpoint, path)
    capsys.readouterr()
    assert run_in_process(*sweep_args(tmp_path)) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and f"population checkpoint {path}" in lines[0], err
    assert "do not fit 4 members" in lines[0]
    after = {job: (r.info.status, rec) for job, (r, rec) in members(tmp_path).items()}
    assert after == before

    path.write_bytes(original)  # the weights whole again, an optimizer state cut
    checkpoint = torch.load(path, weights_only=True)
    state = checkpoint["optimizer_states"][0]["state"][0]
    state["m"] = state["m"][:, :3]
    torch.save(checkpoint, path)
    assert run_in_process(*sweep_args(tmp_path)) == 2
    err = capsys.readouterr().err
    assert "the optimizer state does not fit the members" in err and "weights" not in err
    assert {job: (r.info.status, rec) for job, (r, rec) in members(tmp_path).items()} == before

    path.write_bytes(b"not a checkpoint" + os.urandom(64))  # garbage, or a pickle: refused
    assert run_in_process(*sweep_args(tmp_path)) == 2
    assert "not a checkpoint this pipeline can read safely" in capsys.readouterr().err
    assert {job: (r.info.status, rec) for job, (r, rec) in members(tmp_path).items()} == before


def sync(folder: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "runs.py"), "sync", str(folder)],
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_sync_replays_a_population_journal_into_its_members_only(tmp_path):
    assert kill_after_checkpoint(tmp_path, 0.0, signal.SIGTERM) == 143  # sync waits for its end
    folder = tmp_path / "sw" / "0" / "population"
    killed = members(tmp_path)
    journal = folder / SPOOL_NAME
    lines = Spool(journal).read()
    assert any("sent" in line for line in lines), "the journal was sent as it went"
    # The store loses every member's points and the journal its marks: as if the store had
    # been down all along. sync sends each record into its own member's run, once.
    journal.write_text("".join(json.dumps(line) + "\n" for line in lines if "sent" not in line))
    with sqlite3.connect(tmp_path / "mlruns" / "mlflow.db") as db:
        db.execute("DELETE FROM metrics")
        db.execute("DELETE FROM latest_metrics")
    done = sync(folder)
    assert done.returncode == 0, done.stdout + done.stderr
    assert {job: rec for job, (_, rec) in members(tmp_path).items()} == {
        job: rec for job, (_, rec) in killed.items()
    }
    assert not Spool(journal).pending()
    again = sync(folder)  # nothing twice
    assert again.returncode == 0 and members(tmp_path).keys() == killed.keys()
    assert {job: rec for job, (_, rec) in members(tmp_path).items()} == {
        job: rec for job, (_, rec) in killed.items()
    }

    # A record naming a run outside the population is refused, and that run stays untouched.
    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    outsider = client.create_run(next(iter(killed.values()))[0].info.experiment_id).info.run_id
    record = {
        "seq": 10**6,
        "op": "metrics",
        "run_id": outsider,
        "uri": f"sqlite:///{tmp_path}/mlruns/mlflow.db",
        "points": [["x", 1.0, 0, 0]],
    }
    with journal.open("a") as file:
        file.write(json.dumps(record) + "\n")
    refused = sync(folder)
    assert refused.returncode != 0
    assert outsider in refused.stdout + refused.stderr
    assert client.get_run(outsider).data.metrics == {}

    # A manifest that adds a run of its own choosing is refused before anything is sent.
    manifest = json.loads((folder / "population.json").read_text())
    manifest["run_ids"].append(outsider)
    (folder / "population.json").write_text(json.dumps(manifest))
    forged = sync(folder)
    assert forged.returncode != 0 and "no member of the population" in forged.stdout + forged.stderr
    assert client.get_run(outsider).data.metrics == {}
