"""What both Optuna sweepers (hparams_search, the fair-comparison protocol) share: Hydra's
Sweeper interface on top of stages of tickets (sweeps.study).

A stage is one Optuna study of a fixed size and the jobs each of its tickets runs. `run` fills a
batch with up to `n_jobs` jobs from the stages that are ready (`fill`), launches it through Hydra's
configured launcher (basic, joblib, submitit: every job is a normal `train.py` job making its
own child run), reads each job's outcome back from MLflow (its run, found by its job key) and
tells Optuna; it returns once every stage has ended, waiting while other workers finish theirs.
Outcomes are read from MLflow, not from the job's return value, so that a job found done by a
resumed sweep (sweeps.jobs) and one that ran now are told alike.
"""

from __future__ import annotations

import contextlib
import logging
import math
import statistics
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hydra.plugins.sweeper import Sweeper
from omegaconf import DictConfig, OmegaConf

from pipeline.sweeps.common import PARENT_FILE, job_key
from pipeline.sweeps.search import study as tickets
from pipeline.tracking.status import Status

if TYPE_CHECKING:
    import optuna
    from hydra.types import HydraContext, TaskFunction
    from mlflow.tracking import MlflowClient

log = logging.getLogger(__name__)


class Stage:
    """A study of `size()` tickets; `jobs(ticket)` are the overrides of each of its jobs."""

    name = "stage"
    study: optuna.Study
    suggest: Any = None  # draws a tuning trial's params

    def ready(self) -> bool:
        return True

    def size(self) -> int:
        raise NotImplementedError

    def jobs(self, ticket: tickets.Ticket) -> list[list[str]]:
        raise NotImplementedError


# Hydra's launchers log their banner and every job's overrides at each launch: once per batch
# here, so many times a search; the one line per batch above replaces them.
LAUNCHER_LOGGERS = (
    "hydra._internal.core_plugins.basic_launcher",
    "hydra_plugins.hydra_joblib_launcher._core",
    "hydra_plugins.hydra_submitit_launcher.submitit_launcher",
)


@contextlib.contextmanager
def quiet_launcher() -> Iterator[None]:
    loggers = [logging.getLogger(name) for name in LAUNCHER_LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def tag_overrides(tags: dict[str, object]) -> list[str]:
    """Tags for a job's run, through tracking.tags (training/run.py records them)."""
    return [f"++tracking.tags.{k}={v}" for k, v in tags.items()]


class TicketSweeper(Sweeper):
    """Hydra's Sweeper interface; subclasses say which stages there are."""

    def __init__(self, n_jobs: int = 1, poll_s: float = 5.0) -> None:
        self.n_jobs, self.poll_s = max(1, int(n_jobs)), float(poll_s)
        self.config: DictConfig | None = None
        self.launcher = None
        self.hydra_context = None
        self.job_idx = 0

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        from hydra.core.plugins import Plugins

        self.config, self.hydra_context = config, hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    # -- what subclasses use -----------------------------------------------------------------

    def begin(self) -> tuple[MlflowClient, str, str]:
        """(client, the parent run's id from the sweep folder, the storage URL)."""
        from mlflow.tracking import MlflowClient

        assert self.config is not None
        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        self.client = MlflowClient(self.config.tracking.uri)
        self.parent_id = (sweep_dir / PARENT_FILE).read_text().strip()
        return self.client, self.parent_id, tickets.storage_url(self.config)

    def fill(self, stages: list[Stage]) -> list[tuple[tickets.Ticket, list[list[str]]]]:
        """The next batch: up to `n_jobs` jobs from the first stages that are ready, in order.

        The launcher waits for a batch's slowest job before the next batch starts, so a batch is
        best made of alike jobs: one stage's (one optimizer, the same epochs). Batches that mixed
        optimizers idled longer at their ends (docs/performance.md)."""
        batch: list[tuple[tickets.Ticket, list[list[str]]]] = []
        for stage in stages:
            while stage.ready() and sum(len(jobs) for _, jobs in batch) < self.n_jobs:
                ticket = tickets.claim(stage.study, stage.size(), stage.suggest)
                if ticket is None:
                    break
                batch.append((ticket, stage.jobs(ticket)))
        return batch

    def run(self, stages: list[Stage]) -> None:
        while True:
            batch = self.fill(stages)
            if batch:
                self.launch(batch)
                continue
            waiting = [s.name for s in stages if not tickets.finished(s.study, s.size())]
            if not waiting:
                return
            log.info("Waiting for other workers: %s", ", ".join(waiting))
            time.sleep(self.poll_s)

    def launch(self, batch: list[tuple[tickets.Ticket, list[list[str]]]]) -> None:
        overrides = [job for _, jobs in batch for job in jobs]
        first, last = self.job_idx, self.job_idx + len(overrides) - 1
        studies = sorted({ticket.study.study_name for ticket, _ in batch})
        numbers = ", ".join(str(ticket.number) for ticket, _ in batch)
        jobs = f"Jobs #{first}-#{last}" if last > first else f"Job #{first}"
        log.info("%s: trials %s of %s", jobs, numbers, ", ".join(studies))
        with tickets.heartbeat([ticket for ticket, _ in batch]), quiet_launcher():
            self.launcher.launch(overrides, initial_job_idx=self.job_idx)
        self.job_idx += len(overrides)
        for ticket, jobs in batch:
            tickets.tell(ticket, self.outcome(jobs))

    def outcome(self, jobs: list[list[str]]) -> float | None:
        """The mean objective of the ticket's jobs, or None (FAIL) if any did not finish."""
        from pipeline.sweeps.jobs import find, objective

        values = []
        for job in jobs:
            run = find(self.client, self.parent_id, job_key(job))
            if run is None or run.info.status != Status.FINISHED:
                return None
            values.append(objective(self.client, run.info.run_id))
        value = statistics.fmean(values)
        return None if math.isnan(value) else value
