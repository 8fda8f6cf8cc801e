"""A sweep's jobs checked before anything exists: bad input is one message and exit status 2."""

from __future__ import annotations

import sys

from omegaconf import DictConfig

from pipeline.config.checks import validate
from pipeline.errors import ConfigError
from pipeline.exit_codes import ExitCode
from pipeline.sweeps.common import SweeperKind
from pipeline.sweeps.hydra_internals import grid_jobs

LOCAL_LAUNCHERS = (".BasicLauncher", ".JoblibLauncher", ".PopulationLauncher")  # this machine


def check_jobs(config: DictConfig) -> None:
    """Compose and check the config of every job of a local grid sweep before anything exists.

    Optuna's jobs are drawn during the search; a bad one of those is a FAILED child run.
    """
    launcher = config.hydra.launcher
    if str(launcher._target_).endswith(".PopulationLauncher") and launcher.max_members < 1:
        refuse(f"hydra.launcher.max_members={launcher.max_members}: a population holds at least "
               "one member; e.g. hydra.launcher.max_members=64")  # fmt: skip
    sweeper = SweeperKind.of(config.hydra.sweeper._target_)
    if sweeper in (SweeperKind.SEARCH, SweeperKind.PROTOCOL):
        check_ticket_sweep(config)
        return
    launcher = str(config.hydra.launcher._target_)
    if sweeper != SweeperKind.GRID or not launcher.endswith(LOCAL_LAUNCHERS):
        return  # remote jobs (SLURM) are checked where they run: devices differ from here
    from hydra import compose
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    params = [f"{k}={v}" for k, v in (config.hydra.sweeper.get("params") or {}).items()]
    try:
        overrides = OverridesParser.create().parse_overrides(
            [*params, *config.hydra.overrides.task]
        )
        for batch in grid_jobs(overrides):
            for job in batch:
                validate(
                    compose(config.hydra.job.config_name, overrides=[*searchpath(config), *job])
                )
    except (ConfigError, HydraException) as error:
        refuse(str(error))


def check_ticket_sweep(config: DictConfig) -> None:
    """The sweeper's settings, and the job config of each optimizer it trains."""
    import importlib

    from hydra import compose
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException
    from hydra.utils import get_class

    # the plugin class names the module that holds its sweeper (and that sweeper's `check`)
    plugin = get_class(str(config.hydra.sweeper._target_))
    module = importlib.import_module(plugin.impl.partition(":")[0])
    task = [str(o) for o in config.hydra.overrides.task]
    optimizers = config.hydra.sweeper.get("optimizers") or [None]
    tuning = [str(o) for o in config.hydra.sweeper.get("tuning_overrides") or []]
    try:
        module.check(config)
        check_storage(config)
        parsed = OverridesParser.create().parse_overrides(task)
        fixed = [o for o, p in zip(task, parsed, strict=True) if not p.is_sweep_override()]
        for opt in optimizers:  # hparams_search: the command's own optimizer
            chosen = [o for o in fixed if o.partition("=")[0] not in ("optimizer", "seed")]
            job = [*searchpath(config), *([*chosen, f"optimizer={opt}"] if opt else fixed)]
            try:  # as the protocol's tuning runs get it; the other runs without `tuning`
                validate(compose(config.hydra.job.config_name, overrides=[*job, *tuning]))
            except (ConfigError, HydraException) as error:
                if not tuning:
                    raise
                validate(compose(config.hydra.job.config_name, overrides=job))  # the job's own?
                raise ConfigError(f"hydra.sweeper.tuning_overrides={tuning}: {error}") from None
    except (ConfigError, HydraException) as error:
        refuse(str(error))


def searchpath(config: DictConfig) -> list[str]:
    """The command line's hydra.searchpath (a user's own config dir), which a job composed
    here needs as the launched jobs get it."""
    return [str(o) for o in config.hydra.overrides.hydra if str(o).startswith("hydra.searchpath=")]


def check_storage(config: DictConfig) -> None:
    """Optuna's database can be used, before the sweep's parent run exists."""
    from omegaconf import OmegaConf

    from pipeline.config.databases import check_database
    from pipeline.sweeps.search.study import storage_url

    url = storage_url(config)
    key = "hydra.sweeper.storage"
    if not OmegaConf.select(config, key):
        key = "tracking.optuna_storage"  # set, or made from tracking.uri
    check_database(key, url, "sqlite:////tmp/mlruns/optuna.db")


def refuse(message: str) -> None:
    """Bad input: one message, exit status 2, as for a single run."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(ExitCode.BAD_INPUT)  # passes Hydra's callback guard, which warns on Exception
