"""`pipeline-train` (= `python train.py`): one training run or a sweep, its messages and its exit
status.

Bad values are refused in seconds, before the training code (Lightning) loads; `train()` checks
again, all of it. Sweeps check every job up front (pipeline.sweeps.callback); `resume=` and
`ckpt_path=` take the old run's config first, so both are left to `train()`.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from pipeline import CONFIG_DIR
from pipeline.cli import leave
from pipeline.cli.lines import job_label, job_line, see_it
from pipeline.cli.logs import quiet_libraries
from pipeline.config.resolvers import quiet_schema_warning, register_resolvers
from pipeline.config.rules import ConfigError  # not .checks: that one loads torch
from pipeline.exit_codes import ExitCode

# A SLURM job unpickles `job` (so imports this module), then composes its config: the filter
# must be in place by then, not only in `app()` on the login node.
quiet_schema_warning()


def check_first(cfg: DictConfig) -> None:
    if HydraConfig.get().mode == RunMode.MULTIRUN or cfg.get("resume") or cfg.get("ckpt_path"):
        return
    from pipeline.config.checks import validate

    try:
        validate(cfg, lightning=False)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(ExitCode.BAD_INPUT)


def job(cfg: DictConfig) -> float:
    """The Hydra app's task: a fast check first, then `main`."""
    leave.single_run = HydraConfig.get().mode == RunMode.RUN
    check_first(cfg)
    return main(cfg)


def main(cfg: DictConfig) -> float:
    """One training run: friendly errors, a summary at the end; returns val/acc for sweeps."""
    from pipeline.data.sources import DataError
    from pipeline.sweeps import jobs
    from pipeline.sweeps.common import in_multirun, job_tags, parent_run_id, trials_are_results
    from pipeline.tracking.outage import DiskFull, no_space
    from pipeline.tracking.owners import RunBusy
    from pipeline.training.divergence import Diverged
    from pipeline.training.run import train
    from pipeline.training.signals import Stopped

    try:
        done = jobs.before_job(cfg)  # a resumed sweep: this job's earlier run, if any
        if done is not None:
            return done.result()
        result = train(cfg, parent_run_id=parent_run_id(), tags=job_tags())
    except (ConfigError, DataError, RunBusy) as error:
        print(f"error: {error}", file=sys.stderr)
        if in_multirun():
            raise  # Hydra records the failed job and runs the sweep's other jobs
        sys.exit(ExitCode.BAD_INPUT)
    except Stopped as stop:
        print(stop.message(in_sweep=in_multirun()), file=sys.stderr)
        sys.exit(ExitCode.for_signal(stop.signum))  # a sweep stops too
    except Diverged as error:
        # In a search a diverged trial is a result (its sweep exits 0), elsewhere an error.
        trial = in_multirun() and trials_are_results(HydraConfig.get().sweeper._target_)
        label = f"{job_label()}: " if in_multirun() else ""
        print(f"{label}{'diverged' if trial else 'error'}: {error}", file=sys.stderr)
        if in_multirun():  # the other jobs carry on; the run is tagged diverged=true
            return 0.0  # the worst accuracy, so Optuna steers away (it cannot take NaN)
        sys.exit(ExitCode.DIVERGED)
    except Exception as error:
        # A full disk (train() says which run it marked FAILED; before a run exists, e.g. the
        # store's own disk, there is none): one line, not a traceback.
        full = str(error) if isinstance(error, DiskFull) else no_space(error)
        if full is None:
            raise
        if not isinstance(error, DiskFull):
            full = f"no space left to write ({full}); free disk space there and run again"
        print(f"error: {full}", file=sys.stderr)
        if in_multirun():
            raise
        sys.exit(ExitCode.ERROR)
    from pytorch_lightning.utilities import rank_zero_only

    if rank_zero_only.rank > 0:  # DDP: rank 0 reports for all ranks
        return float("nan")
    test_acc = result.metrics.get("test/acc", float("nan"))
    if in_multirun():  # one line per job, written at once: parallel jobs' lines never mix
        sys.stdout.write(job_line(result.run_id, result.history) + "\n")
        sys.stdout.flush()
    else:
        print(f"MLflow run {result.run_id}: test/acc {test_acc:.4f}")
        print(see_it(str(cfg.tracking.uri)))
    if result.spooled is not None and not in_multirun():  # the writer said what is missing
        sys.exit(ExitCode.TRACKING_INCOMPLETE)
    return result.metrics.get("val/acc", float("nan"))


def program(hydra_app: Callable[[], object]) -> None:
    """Run the Hydra app; a sweep that stopped early still ends its parent run."""
    try:
        hydra_app()
    finally:
        # Hydra's sweepers re-raise a failed job's error once the other jobs have run, which
        # skips the on_multirun_end callback: the sweep's parent run is ended here instead.
        callback = sys.modules.get("pipeline.sweeps.callback")  # loaded with Hydra's callbacks
        if callback is not None:
            callback.end_open_sweeps(sys.exc_info()[1])


def app() -> None:
    """The command: `pipeline-train`, `python -m pipeline train`, `python train.py`.

    conf/ is named by its absolute path, so that the command finds it from any directory."""
    quiet_libraries()  # before MLflow loads
    register_resolvers()  # conf/ uses ${pipeline_root:}, ${pid:}, ${pipeline_gpus:}
    run = hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="train")(job)
    try:
        program(run)
    except SystemExit as stop:
        leave.leave(stop.code)
        raise
    leave.leave(0)  # a finished single run: no interpreter teardown (pipeline.cli.leave)
