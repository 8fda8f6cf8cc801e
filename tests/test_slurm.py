"""hydra/launcher=submitit_slurm and SLURM jobs against a real scheduler: the one-node cluster of
scripts/slurm.sh (`sudo make slurm`), its sbatch, srun, scancel and sacct.

Without the cluster the tests skip and say how to start it; under CI=true (.ci/run starts it)
they fail. Every job asks for 1 CPU and 1 GB, so that the sweeps fit the one node.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import optuna
import pytest
import pytorch_lightning as pl
from conftest import ROOT, Server, make_cfg, require, run_cli, runs_in, store_overrides
from mlflow.tracking import MlflowClient
from test_devices import assert_metrics_match_evaluation
from test_protocol import PROTOCOL, TINY, report_table, table, unbroken  # noqa: F401

from pipeline.sweeps.search import study as tickets
from pipeline.tracking import server as ts
from pipeline.training import devices

HOW = "sudo bash scripts/provision.sh, then start the one-node cluster: sudo make slurm"
# The launcher's own defaults (1 CPU, 4 GB a task): what the README's example submits.
LAUNCHER = ["hydra/launcher=submitit_slurm", "hydra.launcher.timeout_min=10"]
QUICK = ["data.source=embedded", "trainer.max_epochs=1", "tracking.log_model=false"]


def cluster_state() -> str:
    done = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True)
    return done.stdout.strip() if done.returncode == 0 else done.stderr.strip()


@pytest.fixture(scope="module")
def slurm() -> None:
    require("SLURM (sbatch)", shutil.which("sbatch") is not None, HOW)
    state = cluster_state()
    require("A SLURM cluster", state in ("idle", "mix", "alloc"), HOW, f"is not up ({state!r})")
    accounting = subprocess.run(["sacct", "-n", "-X", "-S", "now"], capture_output=True, text=True)
    # submitit learns the end of a job that wrote no result (scancel, time limit) from sacct
    require("SLURM accounting (slurmdbd)", accounting.returncode == 0, HOW, "is off")


def slurm_jobs(sweep_dir: Path) -> dict[int, str]:
    """Sweep job number -> SLURM job id, from submitit's folders (`<array>_<task>` for the tasks
    of an array and `<array>` for its script; a sweep of one job is one plain job)."""
    names = [p.name for p in (sweep_dir / ".submitit").iterdir() if p.is_dir()]
    tasks = {int(name.split("_")[1]): name for name in names if "_" in name}
    return tasks or dict(enumerate(names))


def sacct(job_id: str, timeout_s: float = 120) -> dict[str, dict[str, str]]:
    """The job's allocation and steps as SLURM accounted them once it ended: {JobID: {State,
    NTasks}}. (submitit has the result before the job's processes have exited.)"""
    deadline = time.monotonic() + timeout_s
    while True:
        out = subprocess.run(
            ["sacct", "-n", "-P", "-j", job_id, "-o", "JobID,State,NTasks"],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        rows = {r[0]: {"State": r[1].split()[0], "NTasks": r[2]}
                for r in (line.split("|") for line in out.splitlines())}  # fmt: skip
        state = rows.get(job_id, {}).get("State")
        if state not in (None, "PENDING", "RUNNING", "COMPLETING", "REQUEUED"):
            return rows
        assert time.monotonic() < deadline, f"SLURM job {job_id} still {state}"
        time.sleep(0.5)


def parent_and_children(store: Path):
    runs = runs_in(store)
    (parent,) = [r for r in runs if r.data.tags.get("sweep.role") == "parent"]
    children = [r for r in runs if r is not parent]
    assert all(r.data.tags["mlflow.parentRunId"] == parent.info.run_id for r in children)
    return parent, children


@pytest.mark.slow
def test_a_sweep_through_sbatch_makes_a_finished_run_per_job_under_one_parent(slurm, tmp_path):
    store, sweep = tmp_path / "mlruns", tmp_path / "sweep"
    done = run_cli("-m", *LAUNCHER, "optimizer=sgd,adam", *QUICK, *store_overrides(store),
                   f"hydra.sweep.dir={sweep}")  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]

    # Two SLURM jobs (one array), each accounted COMPLETED.
    jobs = slurm_jobs(sweep)
    assert sorted(jobs) == [0, 1]
    assert all(sacct(job)[job]["State"] == "COMPLETED" for job in jobs.values())
    parent, children = parent_and_children(store)
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["sweep.launcher"] == "SlurmLauncher"
    assert sorted(r.data.tags["optimizer"] for r in children) == ["adam", "sgd"]
    assert all(r.info.status == "FINISHED" for r in children)
    client = MlflowClient(f"sqlite:///{store}/mlflow.db")
    report = {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
    assert {"report/report.md", "report/report.csv"} <= report
    text = Path(client.download_artifacts(parent.info.run_id, "report/report.md")).read_text()
    assert "sgd" in text and "adam" in text


@pytest.mark.slow
def test_ddp_job_on_two_srun_tasks_makes_one_run_of_both_ranks(slurm, tmp_path):
    store, sweep = tmp_path / "mlruns", tmp_path / "sweep"
    done = run_cli("-m", *LAUNCHER, "trainer=ddp", "trainer.devices=2", "trainer.accelerator=cpu",
                   *QUICK, *store_overrides(store), f"hydra.sweep.dir={sweep}")  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]

    # One SLURM job; its one step ran 2 tasks (srun), which are Lightning's 2 ranks.
    (job,) = slurm_jobs(sweep).values()
    steps = sacct(job)
    assert steps[job]["State"] == "COMPLETED"
    assert [s["NTasks"] for k, s in steps.items() if k.endswith(".0")] == ["2"]
    _, (run,) = parent_and_children(store)  # exactly one run, not one per rank
    assert run.info.status == "FINISHED"
    tags = run.data.tags
    assert (tags["world_size"], tags["batch_size.per_device"], tags["batch_size.global"]) == (
        "2", "64", "128",
    )  # fmt: skip
    # val/* and test/* are of the whole splits, each rank having evaluated half
    client = MlflowClient(f"sqlite:///{store}/mlflow.db")
    cfg = make_cfg(tmp_path / "ref", *QUICK)
    assert_metrics_match_evaluation(cfg, client, run)
    correct = np.load(client.download_artifacts(run.info.run_id, "test_correct.npy"))
    assert len(correct) == int(tags["data.test_size"])  # both halves gathered


@pytest.mark.slow
def test_a_job_cancelled_by_scancel_is_killed_and_the_rerun_sweep_finishes_it(slurm, tmp_path):
    """scancel sends SIGTERM: the run stops at a boundary, is KILLED with its checkpoint; the same
    command afterwards continues that run and leaves the finished job alone."""
    store, sweep = tmp_path / "mlruns", tmp_path / "sweep"
    epochs = 30  # long enough to cancel the adam job between its first epoch and its last
    args = ["-m", *LAUNCHER, "optimizer=sgd,adam", *QUICK, f"trainer.max_epochs={epochs}",
            *store_overrides(store), f"hydra.sweep.dir={sweep}"]  # fmt: skip
    with (tmp_path / "first.txt").open("w") as log:
        first = subprocess.Popen(
            [sys.executable, str(ROOT / "train.py"), *args], cwd=ROOT, stdout=log, stderr=log
        )
        checkpoint = sweep / "1" / "checkpoints" / "last.ckpt"  # adam's, after an epoch
        while not checkpoint.exists():
            assert first.poll() is None, (tmp_path / "first.txt").read_text()[-3000:]
            time.sleep(0.2)
        adam_job = slurm_jobs(sweep)[1]
        subprocess.run(["scancel", adam_job], check=True)
        assert first.wait(timeout=600) == 1  # a sweep with a failed job
    assert sacct(adam_job)[adam_job]["State"] == "CANCELLED"

    client = MlflowClient(f"sqlite:///{store}/mlflow.db")
    _, children = parent_and_children(store)
    runs = {r.data.tags["optimizer"]: r for r in children}
    assert runs["sgd"].info.status == "FINISHED"
    assert runs["adam"].info.status == "KILLED"
    adam_id = runs["adam"].info.run_id
    logged = {a.path for a in client.list_artifacts(adam_id, "checkpoints")}
    assert "checkpoints/last.ckpt" in logged
    trained = len(client.get_metric_history(adam_id, "val/acc"))
    assert 1 <= trained < epochs

    again = run_cli(*args)
    assert again.returncode == 0, again.stderr[-3000:]
    parent, children = parent_and_children(store)
    assert parent.info.status == "FINISHED" and parent.data.tags["sweep.resumes"] == "1"
    after = {r.data.tags["optimizer"]: r for r in children}
    assert len(children) == 2
    # sgd's run was not run again: the same run, ended when it first ended
    assert after["sgd"].info.run_id == runs["sgd"].info.run_id
    assert after["sgd"].info.end_time == runs["sgd"].info.end_time
    # adam's run went on from its checkpoint: one val/acc point per epoch, none repeated
    assert after["adam"].info.run_id == adam_id and after["adam"].info.status == "FINISHED"
    steps = [m.step for m in client.get_metric_history(adam_id, "val/acc")]
    assert len(steps) == len(set(steps)) == epochs


@pytest.mark.slow
def test_protocol_workers_as_slurm_jobs_share_one_postgresql_study(
    slurm,
    monkeypatch,
    server: Server,
    unbroken,  # noqa: F811 (test_protocol's fixture: the protocol uninterrupted, in one process)
    tmp_path,
):
    """Two SLURM jobs run the same fair-comparison command on the tracking server, Optuna's
    studies in its PostgreSQL: every trial runs once, and the report is the one-machine one."""
    optuna_db = f"{server.database}_optuna"  # its own database: Optuna's tables beside no others
    ts.ensure_database(server.cluster, optuna_db, server.user, server.password)
    storage = ts.database_uri(server.cluster, optuna_db, server.user)
    monkeypatch.setenv("PGPASSWORD", server.password)  # libpq reads it; no URL holds it
    try:
        command = [sys.executable, str(ROOT / "train.py"), "-m", *PROTOCOL, *TINY,
                   "tracking=server", f"tracking.uri={server.url}", "tracking.artifact_root=null",
                   f"tracking.optuna_storage={storage}", "hydra.sweeper.poll_s=0.5"]  # fmt: skip
        sweep_dir = f"hydra.sweep.dir={tmp_path}/w$SLURM_ARRAY_TASK_ID"  # w0, w1
        worker = f"cd {ROOT} && exec {shlex.join(command)} {sweep_dir}"
        done = subprocess.run(
            ["sbatch", "--wait", "--array=0-1", "--ntasks=1", "--cpus-per-task=1", "--mem=1G",
             "--time=15", f"--output={tmp_path}/worker-%a.out", "--wrap", worker],
            env=os.environ,  # PGPASSWORD with it: sbatch passes the environment on
            capture_output=True, text=True, timeout=900,
        )  # fmt: skip
        outputs = [(tmp_path / f"worker-{i}.out").read_text() for i in range(2)]
        assert done.returncode == 0, done.stderr + "".join(o[-3000:] for o in outputs)

        client = MlflowClient(server.url)
        runs = client.search_runs([client.get_experiment_by_name("mnist-optimizers").experiment_id])
        (parent,) = [r for r in runs if r.data.tags.get("sweep.role") == "parent"]
        children = [r for r in runs if r is not parent]
        assert parent.info.status == "FINISHED"
        # The runs are the one-machine protocol's, each once, and both workers ran some.
        ref_client = MlflowClient(f"sqlite:///{unbroken[0]}/mlflow.db")
        reference = [r for r in runs_in(unbroken[0]) if r.data.tags.get("sweep.role") != "parent"]
        assert len(children) == len(reference) == 12
        assert table(client, children) == table(ref_client, reference)
        started = [len(re.findall(r"^MLflow run \w+ started", o, re.M)) for o in outputs]
        assert sum(started) == 12 and min(started) > 0, started
        # Each study: its budget's trials counted once, COMPLETE; tickets past it not counted.
        for summary in optuna.get_all_study_summaries(storage):
            study = optuna.load_study(study_name=summary.study_name, storage=storage)
            counted = tickets.counted(study, 2)
            assert [t.state.name for t in counted] == ["COMPLETE"] * 2, summary.study_name
            assert all(t.user_attrs.get("counted") is False for t in study.trials[2:])
        for i in range(2):  # each worker ends with the whole protocol's report
            assert report_table(tmp_path / f"w{i}") == report_table(unbroken[1])
    finally:
        ts.drop_database(server.cluster, optuna_db)


def test_no_srun_warning_outside_slurm_while_other_warnings_stay(monkeypatch):
    """Once slurm-client is installed Lightning warns on every run outside SLURM that `srun` is
    unused; the pipeline's plugins (devices.cluster_plugins) remove that one warning only."""
    require("SLURM's srun", shutil.which("srun") is not None, HOW)
    for key in [k for k in os.environ if k.startswith("SLURM_")]:
        monkeypatch.delenv(key)

    def trainer_warnings(**kwargs) -> list[str]:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            # fp16 on a CPU: Lightning warns that it uses bf16 instead (a warning that matters)
            pl.Trainer(accelerator="cpu", precision="16-mixed", logger=False, **kwargs)
        return [str(w.message) for w in caught]

    srun = "`srun` command is available on your system but is not used"
    assert any(srun in m for m in trainer_warnings())  # Lightning left to look for SLURM
    quiet = trainer_warnings(plugins=devices.cluster_plugins())
    assert not any(srun in m for m in quiet)
    assert any("bf16" in m for m in quiet), quiet
