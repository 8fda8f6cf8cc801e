"""A sweep's jobs checked before anything exists: bad input is one message and exit status 2."""

from __future__ import annotations

import sys

from omegaconf import DictConfig

from pipeline.config.checks import ConfigError, validate
from pipeline.exit_codes import ExitCode
from pipeline.sweeps.common import TRIAL_SWEEPERS

LOCAL_LAUNCHERS = (".BasicLauncher", ".JoblibLauncher", ".PopulationLauncher")  # this machine


def check_jobs(config: DictConfig) -> None:
    """Compose and check the config of every job of a local grid sweep before anything exists.

    Optuna's jobs are drawn during the search; a bad one of those is a FAILED child run.
    """
    launcher = config.hydra.launcher
    if str(launcher._target_).endswith(".PopulationLauncher") and launcher.max_members < 1:
        refuse(f"hydra.launcher.max_members={launcher.max_members}: a population holds at least "
               "one member; e.g. hydra.launcher.max_members=64")  # fmt: skip
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
    tuning = [str(o) for o in config.hydra.sweeper.get("tuning_overrides") or []]
    try:
        module.check(config)
        parsed = OverridesParser.create().parse_overrides(task)
        fixed = [o for o, p in zip(task, parsed, strict=True) if not p.is_sweep_override()]
        for opt in optimizers:  # hparams_search: the command's own optimizer
            chosen = [o for o in fixed if o.partition("=")[0] not in ("optimizer", "seed")]
            job = [*chosen, f"optimizer={opt}"] if opt else fixed
            try:  # as the protocol's tuning runs get it; the other runs without `tuning`
                validate(compose(config.hydra.job.config_name, overrides=[*job, *tuning]))
            except (ConfigError, HydraException) as error:
                if not tuning:
                    raise
                validate(compose(config.hydra.job.config_name, overrides=job))  # the job's own?
                raise ConfigError(f"hydra.sweeper.tuning_overrides={tuning}: {error}") from None
    except (ConfigError, HydraException) as error:
        refuse(str(error))


def refuse(message: str) -> None:
    """Bad input: one message, exit status 2, as for a single run."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(ExitCode.BAD_INPUT)  # passes Hydra's callback guard, which warns on Exception
