"""hydra/launcher=submitit_slurm with no cluster here: all but `sbatch` itself runs for real.

Hydra, the plugin's SlurmLauncher and submitit's SlurmExecutor run as they would on a login node
and write the sbatch script; only the submission is replaced, by submitit's in-process debug
executor, which runs each job the way SLURM would on a compute node.
"""

from __future__ import annotations

import runpy
import sys
from dataclasses import dataclass, field

import pytest
from conftest import ONE_EPOCH, ROOT, make_cfg, runs_in, store_overrides
from hydra.core.global_hydra import GlobalHydra
from hydra.core.plugins import Plugins
from hydra.core.utils import JobReturn, JobStatus
from hydra.plugins.launcher import Launcher
from hydra.utils import instantiate
from lightning_fabric.plugins.environments import SLURMEnvironment
from pytorch_lightning.utilities import rank_zero_only
from submitit.local.debug import DebugExecutor
from submitit.local.local import LocalExecutor
from submitit.slurm.slurm import SlurmExecutor

from pipeline.tracking import lifecycle

QUICK = [*ONE_EPOCH, "tracking.log_model=false"]


@dataclass
class FakeSlurm:
    run_jobs: bool = True
    processes: bool = False  # each job a process of its own, with its own log.err, as on SLURM
    scripts: list[str] = field(default_factory=list)  # the sbatch files it would submit
    submitted: list = field(default_factory=list)  # submitit's delayed calls


class _Submitted:
    """A job that SLURM accepted and that completed (for sweeps that are not run here)."""

    def results(self) -> list[JobReturn]:
        job = JobReturn()
        job.status, job._return_value = JobStatus.COMPLETED, None
        return [job]


@pytest.fixture
def fake_slurm(monkeypatch) -> FakeSlurm:
    slurm = FakeSlurm()

    def submit(self: SlurmExecutor, delayed: list) -> list:
        slurm.scripts.append(self._make_submission_file_text("python -m submitit", "uid"))
        slurm.submitted.extend(delayed)
        if not slurm.run_jobs:
            return [_Submitted() for _ in delayed]
        if slurm.processes:
            return LocalExecutor(self.folder)._internal_process_submissions(delayed)
        return DebugExecutor(self.folder)._internal_process_submissions(delayed)

    monkeypatch.setattr(SlurmExecutor, "affinity", classmethod(lambda cls: 2))  # "srun exists"
    monkeypatch.setattr(SlurmExecutor, "_internal_process_submissions", submit)
    return slurm


def run_train_py(monkeypatch, *args: str) -> dict:
    """`python train.py ARGS`, in this process (so that submitit's submission can be replaced);
    returns train.py's globals."""
    monkeypatch.setattr(sys, "argv", [str(ROOT / "train.py"), *args])
    try:
        return runpy.run_path(str(ROOT / "train.py"), run_name="__main__")
    finally:
        GlobalHydra.instance().clear()


@pytest.mark.slow
def test_slurm_sweep_runs_the_same_job_function_as_the_local_launcher(
    fake_slurm, monkeypatch, tmp_path
):
    store = tmp_path / "mlruns"
    common = [*store_overrides(store), *QUICK, f"hydra.sweep.dir={tmp_path}/sweep"]
    slurm_py = run_train_py(
        monkeypatch, "-m", "hydra/launcher=submitit_slurm", "optimizer=sgd,adam", *common
    )

    # What reached SLURM: one array of two jobs, one node, one task, no GPU (trainer=cpu).
    (script,) = fake_slurm.scripts
    assert len(fake_slurm.submitted) == 2
    assert "#SBATCH --nodes=1" in script and "#SBATCH --ntasks-per-node=1" in script
    assert "#SBATCH --gpus-per-node=0" in script
    # Each job calls train.py's task function: the one the local launcher gets too.
    slurm_tasks = {call.function.task_function for call in fake_slurm.submitted}
    local_tasks = []

    def launch(self, job_overrides, initial_job_idx):  # record it, run nothing
        local_tasks.append(self.task_function)
        return []

    # The class Hydra uses (its plugin scan loads the module anew).
    (basic,) = [c for c in Plugins.instance().discover(Launcher) if c.__name__ == "BasicLauncher"]
    monkeypatch.setattr(basic, "launch", launch)
    # Another store: the same command on the same store would continue the SLURM sweep.
    elsewhere = [*store_overrides(tmp_path / "local"), *QUICK, f"hydra.sweep.dir={tmp_path}/l"]
    local_py = run_train_py(monkeypatch, "-m", "optimizer=sgd,adam", *elsewhere)
    from pipeline.cli.train import job  # what hydra.main wraps for train.py and pipeline-train

    assert slurm_py["app"] is local_py["app"]  # train.py runs the installed command's app
    assert slurm_tasks == {job}
    assert local_tasks == [job]

    # The jobs really ran: two finished MLflow runs, children of the SLURM sweep's parent run.
    (parent,) = [r for r in runs_in(store) if r.data.tags.get("sweep.launcher") == "SlurmLauncher"]
    runs = [r for r in runs_in(store) if r.data.tags.get("optimizer")]
    assert sorted(r.data.tags["optimizer"] for r in runs) == ["adam", "sgd"]
    assert all(r.info.status == "FINISHED" for r in runs)
    assert all(0 <= r.data.metrics["test/acc"] <= 1 for r in runs)
    assert {r.data.tags["mlflow.parentRunId"] for r in runs} == {parent.info.run_id}
    assert parent.info.status == "FINISHED"


@pytest.mark.slow
def test_a_slurm_rerun_of_a_local_sweep_says_so_and_logs_no_warning(
    fake_slurm, monkeypatch, tmp_path, capsys
):
    """The same sweep again on SLURM: its job is done, and the console (not only the job's log
    file) says it was not run again; the job's log.err holds no warning from Hydra."""
    fake_slurm.processes = True
    common = [*store_overrides(tmp_path / "mlruns"), *QUICK, f"hydra.sweep.dir={tmp_path}/sweep"]
    run_train_py(monkeypatch, "-m", "optimizer=sgd", *common)
    capsys.readouterr()
    run_train_py(monkeypatch, "-m", "hydra/launcher=submitit_slurm", "optimizer=sgd", *common)
    console = capsys.readouterr().out
    assert "(1 jobs, 1 finished, 0 failed, 0 diverged; 1 of them done before" in console
    (err,) = (tmp_path / "sweep" / ".submitit").rglob("*_log.err")
    (out,) = (tmp_path / "sweep" / ".submitit").rglob("*_log.out")
    assert "Already done: MLflow run" in out.read_text()
    assert "Warning" not in err.read_text(), err.read_text()


def test_multi_gpu_multi_node_job_maps_to_slurm_and_lightning(fake_slurm, monkeypatch, tmp_path):
    fake_slurm.run_jobs = False  # 2 nodes x 4 GPUs: only what would be submitted is checked
    cluster = ["trainer=ddp", "trainer.devices=4", "trainer.num_nodes=2"]
    run_train_py(
        monkeypatch,
        "-m",
        "hydra/launcher=submitit_slurm",
        "hydra.launcher.partition=gpu",
        *cluster,
        "optimizer=sgd,adam",
        f"hydra.sweep.dir={tmp_path}/sweep",
        *store_overrides(tmp_path / "mlruns"),
    )
    (script,) = fake_slurm.scripts
    lines = ("--nodes=2", "--ntasks-per-node=4", "--gpus-per-node=4", "--partition=gpu")
    # the launcher's defaults: 1 CPU a task, 4 GB a task (16 GB for a node's 4 tasks)
    for line in (*lines, "--cpus-per-task=1", "--mem=16GB", "--time=120"):
        assert f"#SBATCH {line}" in script, script
    # docs/slurm.md shows this very command and says what it asks for
    docs = " ".join((ROOT / "docs" / "slurm.md").read_text().split())
    assert "trainer=ddp trainer.devices=4 trainer.num_nodes=2" in docs
    assert "asks for 1 CPU per task, 16 GB per node (4 GB for each of its 4 tasks) and 120" in docs
    assert "srun" in script  # SLURM starts the 8 tasks, each runs the job function

    # On a node, task 5 of 8 (second node, local rank 1) is one Lightning DDP rank of 8.
    slurm_env = {
        "SLURM_JOB_ID": "4242",
        "SLURM_NTASKS": "8",
        "SLURM_NTASKS_PER_NODE": "4",
        "SLURM_JOB_NAME": "train",
        "SLURM_NODELIST": "node[1-2]",
        "SLURM_PROCID": "5",
        "SLURM_LOCALID": "1",
        "SLURM_NODEID": "1",
    }
    for key, value in slurm_env.items():
        monkeypatch.setenv(key, value)
    cfg = make_cfg(tmp_path / "node", *cluster, "trainer.accelerator=cpu")
    monkeypatch.setattr(rank_zero_only, "rank", rank_zero_only.rank)  # the Trainer sets it to 5
    trainer = instantiate(cfg.trainer, logger=False, enable_progress_bar=False)
    assert isinstance(trainer.strategy.cluster_environment, SLURMEnvironment)
    assert (trainer.world_size, trainer.global_rank, trainer.local_rank) == (8, 5, 1)
    # That rank leaves the MLflow run to rank 0: the job is one run, not eight.
    assert rank_zero_only.rank == 5
    monkeypatch.delenv(lifecycle.RUN_ID_ENV, raising=False)
    lifecycle.start_run(cfg, [], {})
    assert runs_in(tmp_path / "node" / "mlruns") == []
