"""A sweep's job that ran before: the same job (its overrides, `common.job_key`) under the same
parent run, as when an interrupted sweep or protocol is started again with the same command.

  FINISHED                          not run again; its objective is returned
  FAILED (diverged or not)          not run again: a failure is a result, already counted
  KILLED, or RUNNING with a         continued in the same run (`resume=<run id>`) from its last
  dead writer                       checkpoint; one that cannot be continued (no checkpoint yet,
                                    or every epoch trained) is deleted and the job runs afresh
  RUNNING with a live writer        skipped with one line: another process runs this job
  a stored config.yaml that names   refused (UntrustedConfig): the run is left as it is, the
  code (pipeline.config.stored)     job fails with one line

Runs in the job's own process (so with every launcher), before `train()`, holding the job's
claim (sweeps.claims) until its run has ended: of several processes running the same sweep,
one runs the job, the others skip it ("Already running: ...") or find it done. A SLURM job of
several tasks (DDP) runs it in every task: task 0 decides and writes its decision to the job's
output folder (on the file system that submitit needs shared), the others follow it; deciding
each for itself, a later task would find task 0's new run RUNNING and leave DDP waiting for it.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from omegaconf import DictConfig, open_dict

from pipeline import errors
from pipeline.sweeps import claims
from pipeline.sweeps.common import JOB_KEY_TAG, PLUMBING, is_diverged, job_tags, parent_run_id
from pipeline.tracking.status import Status

if TYPE_CHECKING:
    from mlflow.entities import Run
    from mlflow.tracking import MlflowClient

    from pipeline.training.run import TrainResult

OBJECTIVE = "best val/acc over epochs"  # what tuning maximises; test metrics are never read


def objective(client: MlflowClient, run_id: str) -> float:
    """The run's best validation accuracy over its epochs (NaN if it has none)."""
    values = [m.value for m in client.get_metric_history(run_id, "val/acc")]
    return max(values) if values else math.nan


def find(client: MlflowClient, parent_id: str, key: str) -> Run | None:
    """The newest child of `parent_id` that ran job `key` (deleted runs left out)."""
    from mlflow.entities import ViewType

    experiment_id = client.get_run(parent_id).info.experiment_id
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{parent_id}' and tags.`{JOB_KEY_TAG}` = '{key}'",
        run_view_type=ViewType.ACTIVE_ONLY,
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return runs[0] if runs else None


class JobFailedBefore(Exception):
    """The job's run of an earlier attempt FAILED; it is not run again."""


@dataclass
class Done:
    """The job ran to its end before: what to return instead of training."""

    run_id: str
    status: str
    diverged: bool
    value: float

    def result(self) -> float:
        if self.status == Status.FINISHED:
            print(f"Already done: MLflow run {self.run_id} (FINISHED); not run again", flush=True)
            return self.value
        if self.diverged:  # as a diverged job returns in a sweep (cli/train.py)
            print(f"Already done: MLflow run {self.run_id} diverged; not run again", flush=True)
            return 0.0
        raise JobFailedBefore(
            f"MLflow run {self.run_id} of this job FAILED in an earlier attempt of the sweep; "
            "it is not run again (delete that run to run the job again)"
        )


@dataclass
class Busy:
    """Another live process runs the job now: skipped here, its run counts once."""

    holder: str

    def result(self) -> float:
        print(f"Already running: {_job_name()} is run by {self.holder}; skipped here", flush=True)
        return math.nan


def _job_name() -> str:
    from hydra.core.hydra_config import HydraConfig

    task = [o for o in HydraConfig.get().overrides.task if not o.lstrip("+~").startswith(PLUMBING)]
    return f"job {' '.join(task) or HydraConfig.get().job.num}"


@dataclass
class OtherTask:
    """A later task of a SLURM job whose task 0 found the job done or refused it: nothing to do
    here (task 0 reports)."""

    def result(self) -> float:
        return math.nan


def run_job(cfg: DictConfig) -> TrainResult | float:
    """A sweep's job: the result of its earlier run where that ended; else `train()` as a child
    of the sweep's parent. A diverged trial of a search is a result (0.0, the worst accuracy, so
    Optuna steers away; it cannot take NaN): the sweep goes on and exits 0."""
    from hydra.core.hydra_config import HydraConfig

    from pipeline.sweeps.common import trials_are_results
    from pipeline.sweeps.lines import job_label
    from pipeline.training.run import train

    with _claim(cfg) as holder:
        if holder is not None:
            _write(_decision_file(), {"stop": True})
            return Busy(holder).result()
        done = before_job(cfg)  # a resumed sweep: this job's earlier run, if any
        if done is not None:
            return done.result()
        try:
            return train(cfg, parent_run_id=parent_run_id(), tags=job_tags())
        except errors.Diverged as error:
            trial = trials_are_results(HydraConfig.get().sweeper._target_)
            print(f"{job_label()}: {'diverged' if trial else 'error'}: {error}", file=sys.stderr)
            return 0.0  # the other jobs carry on; the run is tagged diverged=true


def _claim(cfg: DictConfig) -> contextlib.AbstractContextManager[str | None]:
    """The job's claim, taken by a sweep's job (task 0 of a SLURM job of several tasks)."""
    parent_id = parent_run_id()
    if parent_id is None or cfg.get("resume") or cfg.get("ckpt_path"):
        return contextlib.nullcontext()
    if os.environ.get("SLURM_PROCID", "0") != "0" and _decision_file() is not None:
        return contextlib.nullcontext()  # task 0 holds it and decides for the job
    storage = cfg.tracking.get("optuna_storage")  # PostgreSQL: a lock every host sees
    return claims.job_claim(str(cfg.tracking.uri), parent_id, job_tags()[JOB_KEY_TAG], storage)


def before_job(cfg: DictConfig) -> Done | Busy | OtherTask | None:
    """Done for a job that ended before, Busy while another live process runs it (a writer on
    another host, or a resume outside the sweep); else None, with `cfg.resume` set where the
    job's interrupted run is continued."""
    parent_id = parent_run_id()
    if parent_id is None or cfg.get("resume") or cfg.get("ckpt_path"):
        return None
    decision = _decision_file()
    if decision is not None and os.environ.get("SLURM_PROCID", "0") != "0":
        return _follow(cfg, decision)
    try:
        done = _decide(cfg, parent_id)
    except Exception:
        _write(decision, {"stop": True})
        raise
    _write(decision, {"stop": done is not None, "resume": cfg.get("resume")})
    return done


def _decision_file() -> Path | None:
    """Where task 0 of a SLURM job of several tasks leaves its decision; None for one task."""
    from hydra.core.hydra_config import HydraConfig

    job = os.environ.get("SLURM_JOB_ID")
    if job is None or int(os.environ.get("SLURM_NTASKS", "1")) < 2:
        return None
    attempt = os.environ.get("SLURM_RESTART_COUNT", "0")  # a requeued job keeps its id
    return Path(HydraConfig.get().runtime.output_dir) / f".before-job-{job}-{attempt}.json"


def _write(path: Path | None, decision: dict) -> None:
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.with_suffix(".tmp").write_text(json.dumps(decision))
        path.with_suffix(".tmp").replace(path)  # whole or absent for the readers


def _follow(cfg: DictConfig, path: Path, timeout_s: float = 600.0) -> OtherTask | None:
    """Task 0's decision, once written (it decides within seconds, or the job is broken)."""
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"task 0 of this SLURM job wrote no {path.name} in {timeout_s} s")
        time.sleep(0.2)
    decision = json.loads(path.read_text())
    if decision["stop"]:
        return OtherTask()
    if decision.get("resume"):
        with open_dict(cfg):
            cfg.resume = decision["resume"]
    return None


def _decide(cfg: DictConfig, parent_id: str) -> Done | Busy | None:
    """The table in the module docstring, from the job's earlier run."""
    from mlflow.tracking import MlflowClient

    from pipeline.tracking import owners

    client = MlflowClient(cfg.tracking.uri)
    run = find(client, parent_id, job_tags()[JOB_KEY_TAG])
    if run is None:
        return None
    run_id, status = run.info.run_id, run.info.status
    if status in (Status.FINISHED, Status.FAILED):
        return Done(run_id, status, is_diverged(run), objective(client, run_id))
    if status == Status.RUNNING and owners.writer_state(run.data.tags) != "dead":
        tags = run.data.tags
        pid, host = tags.get(owners.PID_TAG, "?"), tags.get(owners.HOST_TAG, "?")
        return Busy(f"pid {pid} on {host} (its MLflow run {run_id} is RUNNING)")
    if resumable(cfg, run_id):
        print(f"Continuing the job's interrupted MLflow run {run_id} ({status})", flush=True)
        with open_dict(cfg):
            cfg.resume = run_id
        return None
    print(f"Deleting the job's interrupted MLflow run {run_id}: nothing to continue from; "
          "the job runs afresh", flush=True)  # fmt: skip
    if status == Status.RUNNING:
        client.set_terminated(run_id, Status.KILLED)
    client.delete_run(run_id)
    return None


def resumable(cfg: DictConfig, run_id: str) -> bool:
    """`resume=<run id>` would work: a checkpoint, epochs left to train, the run's config."""
    from pipeline.config.job import hydra_overrides
    from pipeline.errors import ConfigError, UntrustedConfig
    from pipeline.training import resume

    trial = cfg.copy()
    with open_dict(trial):
        trial.resume = run_id
    try:
        resume.prepare(trial, hydra_overrides())
    except UntrustedConfig:
        raise  # a tampered run is left as it is: neither continued nor deleted
    except ConfigError:
        return False
    return True
