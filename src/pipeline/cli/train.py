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
from pipeline.cli.logs import quiet_libraries
from pipeline.config.resolvers import quiet_schema_warning, register_resolvers
from pipeline.errors import ConfigError
from pipeline.exit_codes import ExitCode
from pipeline.redact import masked_output

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
    """One training run: friendly errors, a summary at the end; returns val/acc for sweeps.

    A sweep's job goes through pipeline.sweeps.jobs (its earlier run, its parent); a single run
    does not load the sweep package."""
    from pipeline.errors import explain

    multirun = HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
    try:
        if multirun:
            from pipeline.sweeps.jobs import run_job

            result = run_job(cfg)
            if isinstance(result, float):  # done before, or a diverged trial: no new run
                return result
        else:
            from pipeline.training.run import train

            result = train(cfg)
    except Exception as error:
        explained = explain(error, in_sweep=multirun)
        if explained is None:
            raise  # a bug: its traceback shows
        line, code = explained
        print(line, file=sys.stderr)
        if multirun and not ExitCode.stopped_by_signal(code):
            raise  # Hydra records the failed job and runs the sweep's other jobs
        sys.exit(code)  # a signal stops a sweep too
    from pytorch_lightning.utilities import rank_zero_only

    if rank_zero_only.rank > 0:  # DDP: rank 0 reports for all ranks
        return float("nan")
    test_acc = result.metrics.get("test/acc", float("nan"))
    if multirun:  # one line per job, written at once: parallel jobs' lines never mix
        from pipeline.sweeps.lines import job_line

        sys.stdout.write(job_line(result.run_id, result.history) + "\n")
        sys.stdout.flush()
    else:
        from pipeline.tracking.store import see_it

        print(f"MLflow run {result.run_id}: test/acc {test_acc:.4f}")
        print(see_it(str(cfg.tracking.uri)))
    if result.spooled is not None and not multirun:  # the writer said what is missing
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

    conf/ is named by its absolute path, so that the command finds it from any directory.
    Everything it prints goes through pipeline.redact: a password in a URI shows as ***, in
    Hydra's own lines too (its "Error executing job with overrides: [...]", its launchers')."""
    quiet_libraries()  # before MLflow loads
    register_resolvers()  # conf/ uses ${pipeline_root:}, ${pid:}, ${pipeline_gpus:}
    run = hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="train")(job)
    with masked_output():  # before Hydra makes its logging handlers: they write through it
        try:
            program(run)
        except SystemExit as stop:
            leave.leave(stop.code)
            raise
        leave.leave(0)  # a finished single run: no interpreter teardown (pipeline.cli.leave)
