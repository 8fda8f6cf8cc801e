"""Optuna's side of a sweep: its database, its studies, and trials as tickets for jobs.

Storage: `hydra.sweeper.storage`, else `tracking.optuna_storage`, else `optuna.db` next to the
sqlite MLflow store (its own file). Passwords never go into the URL: PostgreSQL's libpq reads
PGPASSWORD from the environment.

Tickets. Optuna numbers a study's trials atomically in its database, so workers that ask at the
same moment never draw the same number. A stage of size n runs the trials numbered 0..n-1,
whatever their end (COMPLETE, or FAIL for a failed or diverged run): each counts once. A worker
that draws a number >= n does not run it: it tells it FAIL at once with the user attr
`counted=false`; such trials are in no count and are never selected.

A claimed trial carries its worker's owner attrs (host, pid, start time, heartbeat: as MLflow
runs do, tracking.owners), the heartbeat refreshed while its jobs run. A RUNNING trial whose
worker is dead (SIGKILL, a lost machine) is taken over by the next worker that looks, with its
number and params unchanged, so it is never counted twice; its jobs continue their own MLflow
runs (sweeps.jobs). Two workers that find the same dead trial at the same moment may both run
it; Optuna keeps the first result (`tell` once), and the job's MLflow run refuses the second
writer on the same host.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from omegaconf import DictConfig, OmegaConf

from pipeline.errors import ConfigError
from pipeline.sweeps.search import optuna_internals

if TYPE_CHECKING:
    import optuna

log = logging.getLogger(__name__)

OWNER_ATTR = "owner"  # {owner.host, owner.pid, owner.start, owner.heartbeat}
COUNTED_ATTR = "counted"  # false on a trial drawn past the budget
UNOWNED_GRACE_S = 120.0  # a RUNNING trial without owner attrs this old was left by a dead asker


def storage_url(config: DictConfig) -> str:
    url = OmegaConf.select(config, "hydra.sweeper.storage") or OmegaConf.select(
        config, "tracking.optuna_storage"
    )
    if not url:
        uri = str(config.tracking.uri)
        if not uri.startswith("sqlite:///"):
            raise ConfigError(
                f"no database for Optuna's studies with tracking.uri={uri}: set "
                "tracking.optuna_storage (e.g. postgresql+psycopg2://user@host:5432/optuna)"
            )
        url = "sqlite:///" + str(Path(uri.removeprefix("sqlite:///")).with_name("optuna.db"))
    url = str(url)
    if urlsplit(url).password is not None:
        raise ConfigError(
            "the Optuna storage URL holds a password, which would be recorded with the sweep: "
            "drop it from the URL and set PGPASSWORD in the environment (libpq reads it)"
        )
    return url


@contextlib.contextmanager
def storage_lock(url: str) -> Iterator[None]:
    """An exclusive lock that every worker on this storage sees: a file lock next to a sqlite
    database, an advisory lock in PostgreSQL; none elsewhere. Released when the process dies."""
    if url.startswith("sqlite:///"):
        from pipeline.tracking.store import creation_lock

        with creation_lock(url):
            yield
        return
    if not url.startswith("postgresql"):
        yield
        return
    import sqlalchemy

    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
    with engine.connect() as connection:
        lock = sqlalchemy.text("SELECT pg_advisory_lock(771077)")
        connection.execute(lock)
        try:
            yield
        finally:
            connection.execute(sqlalchemy.text("SELECT pg_advisory_unlock(771077)"))


def open_study(url: str, name: str) -> optuna.Study:
    """The study `name` (created on first use; tables too, under the storage lock)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    with storage_lock(url):
        storage = optuna.storages.RDBStorage(url, engine_kwargs=kwargs)
        return optuna.create_study(
            storage=storage, study_name=name, direction="maximize", load_if_exists=True
        )


def me() -> dict[str, str]:
    from pipeline.tracking import owners

    return {**owners.owner_tags(), owners.HEARTBEAT_TAG: f"{time.time():.0f}"}


def _dead(trial: optuna.trial.FrozenTrial) -> bool:
    from pipeline.tracking import owners

    owner = trial.user_attrs.get(OWNER_ATTR)
    if not owner:
        started = trial.datetime_start.timestamp() if trial.datetime_start else time.time()
        return time.time() - started > UNOWNED_GRACE_S
    return owners.writer_state(owner) == "dead"


@dataclass
class Ticket:
    """One claimed trial: its number and its params (a tuning trial's suggestions)."""

    study: optuna.Study
    number: int
    trial_id: int
    params: dict[str, Any] = field(default_factory=dict)
    adopted: bool = False

    def trial(self) -> optuna.trial.Trial:
        # how a worker that did not ask the trial can still write it
        return optuna_internals.trial_by_id(self.study, self.trial_id)


def claim(
    study: optuna.Study, size: int, suggest: Callable[[optuna.trial.Trial], None] | None = None
) -> Ticket | None:
    """The next trial of this stage for this worker: a dead worker's, else a new one; None when
    every trial numbered below `size` is taken."""
    import optuna

    trials = study.get_trials(deepcopy=False)
    for old in trials:
        if old.state == optuna.trial.TrialState.RUNNING and old.number < size and _dead(old):
            ticket = Ticket(study, old.number, optuna_internals.trial_id(old), adopted=True)
            trial = ticket.trial()
            trial.set_user_attr(OWNER_ATTR, me())
            if suggest is not None:  # the params it has keep their values; missing ones are drawn
                suggest(trial)
            ticket.params = dict(study.get_trials(deepcopy=False)[old.number].params)
            log.info(
                "Taking over trial %d of %s (its worker is gone)", old.number, study.study_name
            )
            return ticket
    if len(trials) >= size:
        return None
    trial = study.ask()
    if trial.number >= size:  # another worker drew the last counted number first
        trial.set_user_attr(COUNTED_ATTR, False)
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        return None
    trial.set_user_attr(OWNER_ATTR, me())
    if suggest is not None:
        suggest(trial)
    return Ticket(study, trial.number, optuna_internals.trial_id(trial), dict(trial.params))


def tell(ticket: Ticket, value: float | None) -> None:
    """COMPLETE with `value`, or FAIL for None (a failed or diverged run)."""
    import optuna

    state = optuna.trial.TrialState.COMPLETE if value is not None else optuna.trial.TrialState.FAIL
    ticket.study.tell(ticket.number, value, state=state, skip_if_finished=True)


def counted(study: optuna.Study, size: int) -> list[optuna.trial.FrozenTrial]:
    return [t for t in study.get_trials(deepcopy=False) if t.number < size]


def busy(trials: list[optuna.trial.FrozenTrial]) -> bool:
    """Some trial runs in a live worker (a dead worker's trial is claimable: `claim`)."""
    import optuna

    return any(t.state == optuna.trial.TrialState.RUNNING and not _dead(t) for t in trials)


def finished(study: optuna.Study, size: int) -> bool:
    """Every trial of the budget has ended."""
    trials = counted(study, size)
    return len(trials) == size and all(t.state.is_finished() for t in trials)


@contextlib.contextmanager
def heartbeat(tickets: list[Ticket], every_s: float = 60.0) -> Iterator[None]:
    """Refresh the tickets' heartbeat while the block runs (their jobs train)."""
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(every_s):
            for ticket in tickets:
                try:
                    ticket.trial().set_user_attr(OWNER_ATTR, me())
                except Exception as error:  # a busy database: the next beat will do
                    log.debug("heartbeat of trial %d failed: %s", ticket.number, error)

    thread = threading.Thread(target=beat, name="trial-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)
