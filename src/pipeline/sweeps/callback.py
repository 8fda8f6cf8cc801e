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
  on_multirun_end    counts the children, ends the parent FINISHED or FAILED, writes the report.

Hydra's sweepers re-raise a failed job's exception once the batch is done (Hydra catches each
job's exception in `run_job`, so the other jobs have run by then), which skips on_multirun_end:
train.py then calls `end_open_sweeps()`, so the parent never stays RUNNING and the report is
still written.

Hydra loads this callback for single runs too: MLflow and the training side (Lightning) are
imported where a sweep needs them, so that train.py can refuse bad input before they load.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from pipeline.config.checks import ConfigError, validate, validate_tracking
from pipeline.exit_codes import ExitCode
from pipeline.sweeps.common import (
    JOB_KEY_TAG,
    JOB_TAG,
    KEY_TAG,
    PARENT_FILE,
    PLUMBING,
    ROLE_TAG,
    TRIAL_SWEEPERS,
    children,
    count_jobs,
    in_multirun,
    job_key,
    parent_run_id,
    sweep_summary,
)

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

log = logging.getLogger(__name__)

LOCAL_LAUNCHERS = (".BasicLauncher", ".JoblibLauncher")  # jobs on this machine


def effective_n_jobs(n_jobs: int | None, cores: int) -> int:
    """joblib's meaning of n_jobs: None -> 1, -1 -> all cores, -2 -> all but one, ..."""
    if n_jobs is None or n_jobs == 0:
        return 1
    return max(1, n_jobs if n_jobs > 0 else cores + 1 + n_jobs)


def threads_per_job(n_jobs: int | None, cores: int) -> int:
    return max(1, cores // effective_n_jobs(n_jobs, cores))


def cpu_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def sweep_name(task_overrides: list[str], params: dict[str, str]) -> str:
    """e.g. 'sweep optimizer=sgd,adam seed=1,2,3' from the command line and the preset's params."""
    parts = [o for o in task_overrides if not o.lstrip("+~").startswith(PLUMBING)]
    parts += [
        f"{k}={v}" for k, v in params.items() if not any(p.startswith(k + "=") for p in parts)
    ]
    return " ".join(["sweep", *parts])[:250]


def check_jobs(config: DictConfig) -> None:
    """Compose and check the config of every job of a local grid sweep before anything exists.

    Optuna's jobs are drawn during the search; a bad one of those is a FAILED child run.
    """
    sweeper = str(config.hydra.sweeper._target_)
    if sweeper.endswith(OURS):  # sweeps/protocol.py, sweeps/optuna_sweeper.py
        check_ticket_sweep(config)
        return
    launcher = str(config.hydra.launcher._target_)
    if not sweeper.endswith(".BasicSweeper") or not launcher.endswith(LOCAL_LAUNCHERS):
        return  # remote jobs (SLURM) are checked where they run: devices differ from here
    from hydra import compose
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    params = [f"{k}={v}" for k, v in (config.hydra.sweeper.get("params") or {}).items()]
    try:
        overrides = OverridesParser.create().parse_overrides(
            [*params, *config.hydra.overrides.task]
        )
        for batch in BasicSweeper.split_arguments(overrides, None):
            for job in batch:
                validate(compose(config.hydra.job.config_name, overrides=job))
    except (ConfigError, HydraException) as error:
        refuse(str(error))


OURS = TRIAL_SWEEPERS  # failed trials are results, not failures


def check_ticket_sweep(config: DictConfig) -> None:
    """The sweeper's settings, and the job config of each optimizer it trains."""
    import importlib

    from hydra import compose
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    target = str(config.hydra.sweeper._target_)
    name = "protocol" if target.endswith(".ProtocolSweeper") else "optuna_sweeper"
    module = importlib.import_module(f"pipeline.sweeps.{name}")
    task = [str(o) for o in config.hydra.overrides.task]
    optimizers = config.hydra.sweeper.get("optimizers") or [None]
    try:
        module.check(config)
        parsed = OverridesParser.create().parse_overrides(task)
        fixed = [o for o, p in zip(task, parsed, strict=True) if not p.is_sweep_override()]
        for opt in optimizers:  # hparams_search: the command's own optimizer
            chosen = [o for o in fixed if o.partition("=")[0] not in ("optimizer", "seed")]
            job = [*chosen, f"optimizer={opt}"] if opt else fixed
            validate(compose(config.hydra.job.config_name, overrides=job))
    except (ConfigError, HydraException) as error:
        refuse(str(error))


def refuse(message: str) -> None:
    """Bad input: one message, exit status 2, as for a single run."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(ExitCode.BAD_INPUT)  # passes Hydra's callback guard, which warns on Exception


def sigterm_as_interrupt() -> None:
    """SIGTERM raises KeyboardInterrupt like Ctrl-C in the sweep's process (main thread only),
    so that its parent run is ended KILLED between jobs too (inside a job, the training run's
    own handler takes over: pipeline.training.signals)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, signal.default_int_handler)


_watching_parent = False


def stop_with_parent(poll_s: float = 1.0, grace_s: float = 300.0) -> None:
    """In a joblib worker: once the sweep's process is gone (SIGKILL, the OOM killer), the worker
    stops its job as a SIGTERM would (KILLED, with a checkpoint), then exits, instead of training
    on for nobody. The worker's parent is the sweep's process; when it dies, the worker is
    re-parented. Its job's end cannot reach the dead parent (joblib's pipe), so the worker exits
    itself once its run is recorded (no training run open), or after `grace_s` at most."""
    global _watching_parent
    if _watching_parent:
        return
    _watching_parent = True
    parent = os.getppid()

    def watch() -> None:
        from pipeline.training.signals import SignalFlag

        while os.getppid() == parent:
            time.sleep(poll_s)
        os.kill(os.getpid(), signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while SignalFlag.entered and time.monotonic() < deadline:
            time.sleep(poll_s)
        os._exit(ExitCode.SIGTERM)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def is_interrupt(error: BaseException | None) -> bool:
    """A Ctrl-C/SIGTERM on its way out: KeyboardInterrupt, or the exit status a job gave it."""
    return isinstance(error, KeyboardInterrupt) or (
        isinstance(error, SystemExit) and ExitCode.stopped_by_signal(error.code)
    )


_open: list[SweepRun] = []  # sweeps of this process whose parent run has not ended yet


def end_open_sweeps(stop: BaseException | None = None) -> None:
    """End the parent run of a sweep that stopped early (`stop`: the exception on its way out):
    KILLED for Ctrl-C/SIGTERM, FAILED for anything else (a failed job)."""
    for sweep in list(_open):
        sweep.finish(completed=False, stopped="KILLED" if is_interrupt(stop) else "FAILED")


class SweepRun(Callback):
    """Hydra callback: the parent MLflow run of a multirun, its counts and its report."""

    def __init__(self, report: bool = True, target_val_acc: float = 0.9) -> None:
        self.report = report
        self.target_val_acc = target_val_acc
        self.client: MlflowClient | None = None
        self.parent_id: str | None = None
        self.config: DictConfig | None = None

    # -- the sweep's process ----------------------------------------------------------------

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        # A store that cannot be reached or written stops the sweep before any job starts (and
        # before the training code loads): an exception here would only be a warning from
        # Hydra, after MLflow's minutes of retries.
        try:
            validate_tracking(config)
        except ConfigError as error:
            refuse(str(error))
        from pipeline.tracking import owners
        from pipeline.tracking.params import git_state
        from pipeline.tracking.store import StoreError, ensure_experiment, open_store
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
        from pipeline.sweeps import identity

        tags[KEY_TAG] = identity.sweep_key(config)  # the same command finds this parent again
        with identity.parent_lock(config):
            run = identity.find_parent(self.client, experiment_id, tags[KEY_TAG])
            if run is not None:
                identity.take_up(self.client, run, tags)
            else:
                run = self.client.create_run(
                    experiment_id, run_name=sweep_name(task, params), tags=tags
                )
        self.parent_id = run.info.run_id
        self.config = config
        sweep_dir.mkdir(parents=True, exist_ok=True)
        (sweep_dir / PARENT_FILE).write_text(self.parent_id)
        _open.append(self)
        log.info("Sweep: parent MLflow run %s (%s)", self.parent_id, run.info.run_name)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        self.finish(completed=True)

    def finish(self, completed: bool, stopped: str = "FAILED") -> None:
        """Counts, Optuna's best value, the report, then the parent's final status."""
        from mlflow.entities import Metric, Param

        if self in _open:
            _open.remove(self)
        if self.parent_id is None or self.client is None or self.config is None:
            return
        client, parent_id, self.parent_id = self.client, self.parent_id, None
        counts = count_jobs(children(client, parent_id))
        sweeper = str(self.config.hydra.sweeper._target_)
        ok = counts["failed"] == 0 or sweeper.endswith(OURS)  # failed trials count as results
        status = "FINISHED" if completed and ok else "FAILED"
        status = status if completed else stopped
        metrics = [Metric(f"sweep/{k}", v, 0, 0) for k, v in counts.items()]
        params: list[Param] = []
        best = Path(self.config.hydra.sweep.dir) / "optimization_results.yaml"
        if best.is_file():  # written by the Optuna sweeper when the search is done
            result = OmegaConf.load(best)
            params = [Param(f"best.{k}", str(v)) for k, v in result.get("best_params", {}).items()]
            if result.get("best_value") is not None:
                metrics.append(Metric("best_value", float(result.best_value), 0, 0))
        client.log_batch(parent_id, metrics=metrics, params=params)
        if self.report and not sweeper.endswith(".ProtocolSweeper"):  # that one writes its own
            try:
                from pipeline.sweeps.report import write_report

                sweep_dir = Path(self.config.hydra.sweep.dir)  # report/ (resumed: report-2/)
                write_report(client, parent_id, sweep_dir, self.target_val_acc)
            except Exception:  # the parent's status matters more than its report
                log.exception("Sweep report failed; run scripts/compare.py --sweep %s", parent_id)
        from pipeline.tracking.lifecycle import Status, end_run

        end_run(client, parent_id, Status(status))
        print(sweep_summary(status, counts, sweeper, parent_id), flush=True)

    # -- each job's process -----------------------------------------------------------------

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        if not in_multirun():
            return
        launcher = HydraConfig.get().launcher
        if "joblib" in str(launcher.get("_target_", "")).lower():
            import torch

            threads = threads_per_job(launcher.get("n_jobs"), cpu_cores())
            torch.set_num_threads(threads)
            stop_with_parent()

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        from hydra.core.utils import JobStatus

        from pipeline.tracking.lifecycle import Status, end_run
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
        end_run(client, run.info.run_id, Status.FAILED, job_return._return_value)
