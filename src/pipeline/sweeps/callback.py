"""One parent MLflow run per Hydra multirun; every job of the sweep is one of its child runs.

`SweepRun` is a Hydra callback (conf/train.yaml, `hydra.callbacks.sweep`):

  on_multirun_start  checks the config of every job of a grid sweep (bad input: one message,
                     exit status 2, nothing created, as for a single run); then creates the
                     store, the experiment and the parent run once, before any job starts
                     (parallel jobs never race on creating them), and writes the parent's id
                     into the sweep folder, where every job reads it: joblib/submitit jobs run
                     in other processes, so the id travels through the shared folder.
  on_job_start       caps torch threads in parallel jobs so that n_jobs x threads <= cores.
  on_job_end         a job that failed before it could create its run gets a FAILED child run
                     anyway, so every job of the sweep is visible (and counted) in MLflow.
  on_multirun_end    counts the children, ends the parent FINISHED or FAILED, writes the report:
                     of several processes running the same sweep, only the last one to end
                     does (sweeps.claims.Membership); the others say so in one line.

Hydra's sweepers re-raise a failed job's exception once the batch is done (Hydra catches each
job's exception in `run_job`, so the other jobs have run by then), which skips on_multirun_end:
train.py then calls `end_open_sweeps()`, so the parent never stays RUNNING and the report is
still written.

The checks of a sweep's jobs are in sweeps.checks, its processes' threads and signals in
sweeps.workers. Hydra loads this callback for single runs too: MLflow and the training side
(Lightning) are imported where a sweep needs them, so that train.py can refuse bad input before
they load.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from pipeline.config.checks import validate_tracking
from pipeline.errors import ConfigError
from pipeline.exit_codes import ExitCode
from pipeline.sweeps import claims, identity, lines
from pipeline.sweeps.checks import check_jobs, refuse
from pipeline.sweeps.common import (
    JOB_KEY_TAG,
    JOB_TAG,
    KEY_TAG,
    PARENT_FILE,
    PLUMBING,
    ROLE_TAG,
    SweeperKind,
    best_setting,
    children,
    count_jobs,
    in_multirun,
    job_key,
    parent_run_id,
    sweep_summary,
)
from pipeline.sweeps.hydra_internals import job_error
from pipeline.sweeps.workers import (
    cpu_cores,
    is_interrupt,
    sigterm_as_interrupt,
    stop_with_parent,
    threads_per_job,
)
from pipeline.tracking.status import Status

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

log = logging.getLogger(__name__)

ENDED = (Status.FINISHED, Status.FAILED)  # a job whose run ended so is not run again (sweeps.jobs)


_open: list[SweepRun] = []  # sweeps of this process whose parent run has not ended yet


def end_open_sweeps(stop: BaseException | None = None) -> None:
    """End the parent run of a sweep that stopped early (`stop`: the exception on its way out):
    KILLED for Ctrl-C/SIGTERM, FAILED for anything else (a failed job)."""
    for sweep in list(_open):
        sweep.finish(
            completed=False, stopped=Status.KILLED if is_interrupt(stop) else Status.FAILED
        )


class SweepRun(Callback):
    """Hydra callback: the parent MLflow run of a multirun, its counts and its report."""

    def __init__(self, report: bool = True, target_val_acc: float = 0.9) -> None:
        self.report = report
        self.target_val_acc = target_val_acc
        self.client: MlflowClient | None = None
        self.parent_id: str | None = None
        self.config: DictConfig | None = None
        self.done_before: set[str] = set()  # children that had ended before this command
        self.membership: claims.Membership | None = None

    # -- the sweep's process ----------------------------------------------------------------

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        # A store that cannot be reached or written stops the sweep before any job starts (and
        # before the training code loads): an exception here would only be a warning from
        # Hydra, after MLflow's minutes of retries.
        try:
            validate_tracking(config)
        except ConfigError as error:
            refuse(str(error))
        from pipeline.errors import StoreError
        from pipeline.tracking import owners
        from pipeline.tracking.params import git_state
        from pipeline.tracking.store import ensure_experiment, open_store
        from pipeline.training import devices

        try:
            devices.check_multirun(config)  # trainer=ddp cannot sweep (docs/devices.md)
        except ConfigError as error:
            refuse(str(error))
        check_jobs(config)
        sweep_dir = Path(config.hydra.sweep.dir)
        try:  # made whole before any job starts, under the lock the jobs' runs take too
            self.client = open_store(config.tracking.uri)
        except StoreError as error:
            refuse(str(error))
        experiment_id = ensure_experiment(
            self.client, config.tracking.experiment, config.tracking.artifact_root
        )
        task = [str(o) for o in config.hydra.overrides.task]
        params = {str(k): str(v) for k, v in (config.hydra.sweeper.get("params") or {}).items()}
        commit, dirty = git_state()
        tags = {
            ROLE_TAG: "parent",
            "sweep.id": sweep_dir.name,
            "sweep.dir": str(sweep_dir),
            "sweep.overrides": " ".join(task)[:5000],
            "sweep.params": " ".join(f"{k}={v}" for k, v in params.items())[:5000],
            "sweep.launcher": str(config.hydra.launcher._target_).rsplit(".", 1)[-1],
            "sweep.sweeper": str(config.hydra.sweeper._target_).rsplit(".", 1)[-1],
            "git.commit": commit,
            "git.dirty": str(dirty).lower(),
            "mlflow.source.name": "train.py",
            "mlflow.source.type": "LOCAL",
            **owners.owner_tags(),  # `scripts/runs.py clean-stale` can judge a SIGKILLed sweep
        }
        sigterm_as_interrupt()  # so that train.py can end the parent KILLED

        tags[KEY_TAG] = identity.sweep_key(config)  # the same command finds this parent again
        with identity.parent_lock(config):
            run = identity.find_parent(self.client, experiment_id, tags[KEY_TAG])
            if run is not None:
                identity.take_up(self.client, run, tags)
                # Jobs that ended then are not run again (sweeps.jobs); their own lines may be
                # in SLURM's log files only, so the summary counts them on this console.
                ended = children(self.client, run.info.run_id)
                self.done_before = {r.info.run_id for r in ended if r.info.status in ENDED}
            else:
                run = self.client.create_run(
                    experiment_id, run_name=identity.sweep_name(task, params), tags=tags
                )
        self.parent_id = run.info.run_id
        self.config = config
        storage = config.tracking.get("optuna_storage")  # PostgreSQL: a lock every host sees
        self.membership = claims.Membership(str(config.tracking.uri), self.parent_id, storage)
        self.membership.join()  # held until this process's jobs are done
        sweep_dir.mkdir(parents=True, exist_ok=True)
        (sweep_dir / PARENT_FILE).write_text(self.parent_id)
        _open.append(self)
        log.info("Sweep: parent MLflow run %s (%s)", self.parent_id, run.info.run_name)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if not self.finish(completed=True):  # the status is not in the store: not a success
            sys.exit(ExitCode.TRACKING_INCOMPLETE)  # passes Hydra's callback guard
        if getattr(self, "report_failed", False):
            sys.exit(ExitCode.ERROR)

    def finish(self, completed: bool, stopped: Status = Status.FAILED) -> bool:
        """Counts, Optuna's best value, the report, then the parent's final status; False if
        the status could not be written (an `error:` line says so)."""
        if self in _open:
            _open.remove(self)
        if self.parent_id is None or self.client is None or self.config is None:
            return True
        client, parent_id, self.parent_id = self.client, self.parent_id, None
        membership, self.membership = self.membership, None
        if membership is not None and not membership.last():
            claims.hand_over(client, parent_id)
            print(f"Sweep: another process still runs this sweep; it ends parent MLflow run "
                  f"{parent_id} and writes the report", flush=True)  # fmt: skip
            return True
        try:
            return self._end(client, parent_id, completed, stopped)
        finally:
            if membership is not None:
                membership.release()

    def _end(self, client: MlflowClient, parent_id: str, completed: bool, stopped: Status) -> bool:
        from mlflow.entities import Metric, Param

        assert self.config is not None
        from pipeline.tracking.lifecycle import end_run
        from pipeline.tracking.outage import reason, retrying

        # Every read and write here waits out a locked or unreachable store as a training run's
        # end does (`retrying`); what still fails is said, and the status is written regardless.
        counts: dict[str, int] = {}
        try:
            counts = retrying(lambda: count_jobs(children(client, parent_id)))
        except Exception as error:
            log.warning("Sweep: could not count the jobs of %s (%s)", parent_id, reason(error))
        sweeper = str(self.config.hydra.sweeper._target_)
        kind = SweeperKind.of(sweeper)
        ok = counts.get("interrupted", 0) == 0 and (
            counts.get("failed", 0) == 0 or kind.trials_are_results  # failed trials: results
        )
        status = Status.FINISHED if completed and ok and counts else Status.FAILED
        status = status if completed else stopped
        metrics = [Metric(f"sweep/{k}", v, 0, 0) for k, v in counts.items()]
        params: list[Param] = []
        best, selected = Path(self.config.hydra.sweep.dir) / "optimization_results.yaml", ""
        if best.is_file():  # written by the Optuna sweeper when the search is done
            result = OmegaConf.load(best)
            params = [Param(f"best.{k}", str(v)) for k, v in result.get("best_params", {}).items()]
            if result.get("best_value") is not None:
                metrics.append(Metric("best_value", float(result.best_value), 0, 0))
            value = result.get("best_value")
            selected = best_setting(dict(result.get("best_params", {})), value)
        try:
            retrying(lambda: client.log_batch(parent_id, metrics=metrics, params=params))
        except Exception as error:
            log.warning("Sweep: could not record the counts of %s (%s)", parent_id, reason(error))
        if self.report and kind != SweeperKind.PROTOCOL:  # that one writes its own
            try:
                from pipeline.sweeps.report import write_report

                sweep_dir = Path(self.config.hydra.sweep.dir)  # report/ (resumed: report-2/)
                retrying(lambda: write_report(client, parent_id, sweep_dir, self.target_val_acc))
            except Exception:  # the parent's status matters more than its report
                log.exception("Sweep report failed; run scripts/compare.py --sweep %s", parent_id)
        written = end_run(client, parent_id, status)
        self.report_failed = kind == SweeperKind.PROTOCOL and self._report_failed()
        if counts:
            before = self.done_before & {r.info.run_id for r in children(client, parent_id)}
            summary = sweep_summary(status, counts, sweeper, parent_id, selected, len(before))
            if status == Status.KILLED:  # finished jobs are not run again, interrupted ones go on
                summary += f"; continue it with the same command: {lines.command_line()}"
            if self.report_failed:  # the runs are fine; the command is not a success
                summary = summary.replace("finished:", "ran its jobs, but its report failed:")
            print(summary, flush=True)
            from pipeline.tracking.store import see_it  # once a sweep, not once a job

            print(see_it(str(self.config.tracking.uri)), flush=True)
        else:
            print(f"Sweep {status}: parent MLflow run {parent_id} (jobs not counted)", flush=True)
        return written

    def _report_failed(self) -> bool:
        """The protocol's report failed (its sweeper left REPORT_FAILED): one `error:` line."""
        from pipeline.sweeps.protocol.sweeper import REPORT_FAILED

        marker = Path(self.config.hydra.sweep.dir) / REPORT_FAILED
        if not marker.is_file():
            return False
        print(
            f"error: the fair comparison's runs are recorded but its report failed "
            f"({marker.read_text().strip()[:300]}); make it again with "
            "`python scripts/compare.py --sweep <parent run id>`",
            file=sys.stderr,
            flush=True,
        )
        return True

    # -- each job's process -----------------------------------------------------------------

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        if not in_multirun():
            return
        launcher = HydraConfig.get().launcher
        if "joblib" in str(launcher.get("_target_", "")).lower():
            import torch

            # Our sweepers launch batches of hydra.sweeper.n_jobs: no more run at once.
            batch = HydraConfig.get().sweeper.get("n_jobs")
            threads = threads_per_job(launcher.get("n_jobs"), cpu_cores(), batch)
            torch.set_num_threads(threads)
            stop_with_parent()

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        from hydra.core.utils import JobStatus

        from pipeline.tracking.lifecycle import end_run
        from pipeline.tracking.store import open_store

        parent_id = parent_run_id()
        if parent_id is None or job_return.status != JobStatus.FAILED:
            return
        client = open_store(config.tracking.uri)
        num = str(HydraConfig.get().job.num)
        key = job_key(list(HydraConfig.get().overrides.task))
        if any(r.data.tags.get(JOB_KEY_TAG) == key for r in children(client, parent_id)):
            return  # train() created the run and ended it FAILED (or an earlier attempt did)
        # The job failed before its run existed (bad value, missing data): record it anyway.
        overrides = [o for o in job_return.overrides or [] if not o.startswith(PLUMBING)]
        experiment_id = client.get_run(parent_id).info.experiment_id
        run = client.create_run(
            experiment_id,
            run_name=" ".join(overrides)[:250] or f"job {num}",
            tags={
                "mlflow.parentRunId": parent_id,
                JOB_TAG: num,
                JOB_KEY_TAG: key,
                "optimizer": str(OmegaConf.select(config, "optimizer.name", default="?")),
                "overrides": " ".join(job_return.overrides or [])[:5000],
            },
        )
        end_run(client, run.info.run_id, Status.FAILED, job_error(job_return))
