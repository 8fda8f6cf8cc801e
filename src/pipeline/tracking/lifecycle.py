"""A run's lifecycle: the one place where an MLflow run is created, reopened and ended.

A training run (and a sweep's parent, and a landscape's runs) ends through `ending()`:

  the block returns                          FINISHED
  a signal was received, or Ctrl-C           KILLED
  any other exception                        FAILED, with tag `error` and `traceback.txt`
                                             (and diverged=true for a diverged loss)

A run is created only after every check of the input has passed (pipeline.config), so a bad
input never leaves a run behind; from creation on, `ending()` is the only way out.
Under DDP only rank 0 writes: the other ranks get the run id from rank 0 (`RUN_ID_ENV`).
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import sys
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import mlflow
import torch

# Lightning's own rank_zero_only (the same object, its rank set by Lightning), without loading
# Lightning: a sweep's parent is ended from code that must stay light.
from lightning_utilities.core.rank_zero import rank_zero_only
from mlflow.entities import Param
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf

from pipeline.errors import ConfigError, DiskFull, Diverged, no_space
from pipeline.tracking.outage import reason, retrying
from pipeline.tracking.params import carried_overrides, flat_params, git_state, run_name
from pipeline.tracking.status import Status
from pipeline.tracking.store import creation_lock, ensure_experiment, open_store, unwritable
from pipeline.tracking.tags import DIVERGED_LOSS_TAG, DIVERGED_STEP_TAG, DIVERGED_TAG, ERROR_TAG
from pipeline.tracking.writer import Writer


def rank() -> int:
    """This process's rank: Lightning sets it when it loads; a command without Lightning (the
    landscapes, a sweep's parent) is rank 0."""
    return getattr(rank_zero_only, "rank", 0)


# Rank 0 puts its run id here before DDP starts the other ranks, which then log into the same run.
RUN_ID_ENV = "PIPELINE_MLFLOW_RUN_ID"
PARAM_CHUNK = 100  # params per log_batch call (MLflow's limit)


def status_for(error: BaseException | None, signal_received: int | None = None) -> Status:
    if error is None:
        return Status.FINISHED
    if signal_received is not None or isinstance(error, KeyboardInterrupt):
        return Status.KILLED
    return Status.FAILED


def log_params(client: MlflowClient, run_id: str, params: dict[str, str]) -> None:
    batch = [Param(k, v[:6000]) for k, v in params.items()]
    for start in range(0, len(batch), PARAM_CHUNK):
        client.log_batch(run_id, params=batch[start : start + PARAM_CHUNK])


def log_config(
    client: MlflowClient, run_id: str, cfg: DictConfig, overrides_path: str, overrides: list[str]
) -> None:
    """The full resolved config as `config.yaml` (params are cut at 6000 characters)."""
    resolved = OmegaConf.to_container(cfg, resolve=True)
    resolved.pop("hydra", None)
    client.log_dict(run_id, resolved, "config.yaml")
    client.log_dict(run_id, {"overrides": list(overrides)}, overrides_path)


def start_run(
    cfg: DictConfig,
    overrides: list[str],
    tags: dict[str, str],
    parent_run_id: str | None = None,
) -> tuple[MlflowClient, str]:
    """Create the MLflow run and record the config; returns (client, run id)."""
    client = open_store(cfg.tracking.uri)  # a fresh sqlite store is made whole first
    with creation_lock(cfg.tracking.uri):  # parallel jobs may create the experiment at once
        if rank() > 0:
            # A DDP rank > 0 logs nothing: rank 0 made the run. Under SLURM every rank is its own
            # task (no environment inherited from rank 0), so the id may be unknown here.
            return client, os.environ.get(RUN_ID_ENV, "")
        tracked = cfg.tracking
        experiment_id = ensure_experiment(client, tracked.experiment, tracked.artifact_root)
    check_artifact_location(client, experiment_id)
    commit, dirty = git_state()
    all_tags = {
        "optimizer": str(cfg.optimizer.name),
        "optimizer.impl": str(cfg.optimizer.get("impl", "torch")),
        "git.commit": commit,
        "git.dirty": str(dirty).lower(),
        "mlflow.source.git.commit": commit,
        "mlflow.source.name": "train.py",
        "mlflow.source.type": "LOCAL",
        "version.torch": torch.__version__,
        "version.lightning": importlib.metadata.version("pytorch-lightning"),
        "version.mlflow": mlflow.__version__,
        "overrides": " ".join(overrides)[:5000],  # a sweep's report groups runs by these
        **tags,
    }
    if parent_run_id:
        all_tags["mlflow.parentRunId"] = parent_run_id
    run_id = client.create_run(
        experiment_id, run_name=run_name(cfg, overrides), tags=all_tags
    ).info.run_id
    try:
        log_params(client, run_id, flat_params(cfg))
        log_config(client, run_id, cfg, "overrides.yaml", overrides)
    except BaseException as error:  # the run exists: it must not stay RUNNING
        end_run(client, run_id, status_for(error), error)
        if (full := no_space(error)) is not None:  # e.g. config.yaml on a full artifact disk
            raise DiskFull(
                f"MLflow run {run_id} marked FAILED: no space left to record its config ({full})"
                "; free disk space there and run again"
            ) from None
        raise
    os.environ[RUN_ID_ENV] = run_id
    return client, run_id


def check_artifact_location(client: MlflowClient, experiment_id: str) -> None:
    """The experiment's artifact folder (where this run's checkpoints and figures go) must be
    writable before the run is made: it is fixed when the experiment is created, and need not
    be where the store's database is."""
    location = client.get_experiment(experiment_id).artifact_location
    if not location.startswith("file:"):
        return  # a server (mlflow-artifacts:) or a cloud store: its writes are its own to check
    folder = Path(urlsplit(location).path)
    problem = unwritable(folder)
    if problem is not None:
        raise ConfigError(
            f"tracking.artifact_root: {problem}; artifacts of this experiment go there (set "
            "when it was created): make it writable, or use another tracking.experiment"
        )


def reopen_run(
    client: MlflowClient,
    run_id: str,
    cfg: DictConfig,
    overrides: list[str],
    tags: dict[str, str],
    skip_params: tuple[str, ...] = (),
) -> None:
    """Set a stopped run RUNNING again: new params logged, changed ones recorded as tags
    `resume.changed.<key>` = "old -> new" (MLflow does not allow a param to change);
    `skip_params`: keys that only say how this session started (resume=, ckpt_path=)."""
    if rank() > 0:
        return  # DDP: rank 0 reopens the run, the others only train
    run = client.get_run(run_id)
    old = run.data.params
    new = {k: v[:6000] for k, v in flat_params(cfg).items() if k not in skip_params}
    log_params(client, run_id, {k: v for k, v in new.items() if k not in old})
    count = int(run.data.tags.get("resume.count", "0")) + 1
    all_tags = {
        **tags,
        "resume.count": str(count),
        **{f"resume.changed.{k}": f"{old[k]} -> {v}" for k, v in new.items() if old.get(k, v) != v},
    }
    for key, value in all_tags.items():
        client.set_tag(run_id, key, value)
    # The name says what the run is now (its figure's title too): `trainer.max_epochs=12` on
    # the resume replaces the first command's `max_epochs=100` in it.
    before = run.data.tags.get("overrides", "").split()
    name = run_name(cfg, carried_overrides(before, overrides, skip_params))
    client.update_run(run_id, status="RUNNING", name=name if name != run.info.run_name else None)
    log_config(client, run_id, cfg, f"resume/{count}/overrides.yaml", overrides)
    os.environ[RUN_ID_ENV] = run_id  # DDP ranks > 0 log into the same run


def end_run(
    client: MlflowClient,
    run_id: str,
    status: Status,
    error: BaseException | None = None,
    writer: Writer | None = None,
) -> bool:
    """Mark the run; a failure's traceback becomes an artifact (rank 0 only). False if the
    status could not be written (without a writer; with one, the spool keeps it).

    With the run's `writer` (a training run) these go behind everything it has queued and the
    writer is closed: what the store does not take in time stays in its spool, the status too
    (tracking.writer). Without one the status write is retried for a bounded time (a sqlite
    store locked by another process), and a status that cannot be written is said on stderr.
    """
    if rank() > 0:
        return True
    tags, text = {}, None
    if error is not None and status == Status.FAILED:
        text = "".join(traceback.format_exception(type(error), error, error.__traceback__))
        tags = {ERROR_TAG: f"{type(error).__name__}: {error}"}
        if isinstance(error, Diverged):
            tags[DIVERGED_TAG] = "true"
            if error.step is not None:
                tags[DIVERGED_LOSS_TAG] = repr(float(error.loss))
                tags[DIVERGED_STEP_TAG] = str(error.step)
        tags[ERROR_TAG] = tags[ERROR_TAG][:1000]
    if writer is not None:
        if text is not None:
            writer.set_tags(tags)
            writer.log_text(text, "traceback.txt")
        writer.set_status(status)
        writer.close()
    else:
        if text is not None:
            try:
                for key, value in tags.items():
                    client.set_tag(run_id, key, value)
                client.log_text(run_id, text, "traceback.txt")
            except Exception:  # the status matters more than the traceback artifact
                pass
        written = set_status(client, run_id, status)
    if os.environ.get(RUN_ID_ENV) == run_id:
        os.environ.pop(RUN_ID_ENV)
    return writer is not None or written


def set_status(client: MlflowClient, run_id: str, status: Status) -> bool:
    """`set_terminated`, retried while the store is unavailable (`retrying`). False (and a line
    on stderr) if it could not be written."""
    try:
        retrying(lambda: client.set_terminated(run_id, str(status)))
        return True
    except Exception as error:
        print(
            f"error: could not mark MLflow run {run_id} {status} ({reason(error)}); "
            "it stays RUNNING in the store: python scripts/runs.py clean-stale marks it "
            "KILLED once this process has ended",
            file=sys.stderr,
            flush=True,
        )
        return False


@contextlib.contextmanager
def ending(
    client: MlflowClient,
    run_id: str,
    signal_received: Callable[[], int | None] = lambda: None,
    before_end: Callable[[Status], None] | None = None,
    writer: Writer | None = None,
) -> Iterator[None]:
    """End the run when the block ends, with the status that says how (see the module doc).

    `before_end(status)` runs first, e.g. to log the newest checkpoint of a stopped run; the
    status goes through the run's `writer`, if it has one (see `end_run`).
    """
    try:
        yield
    except BaseException as error:
        status = status_for(error, signal_received())
        if before_end is not None:
            before_end(status)
        end_run(client, run_id, status, error, writer)
        raise
    if before_end is not None:
        before_end(Status.FINISHED)
    end_run(client, run_id, Status.FINISHED, writer=writer)
