"""MLflow: one run per training run, created only after the config and data have been checked."""

from __future__ import annotations

import os
import subprocess
import time
import traceback
from collections import defaultdict
from pathlib import Path
from typing import Any

import mlflow
import pytorch_lightning as pl
import torch
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.loggers.logger import Logger
from pytorch_lightning.utilities import rank_zero_only

from pipeline import PROJECT_ROOT
from pipeline.optim import optimizer_class
from pipeline.store import creation_lock

# Rank 0 puts its run id here before DDP starts the other ranks, which then log into the same run.
RUN_ID_ENV = "PIPELINE_MLFLOW_RUN_ID"


def ensure_experiment(client: MlflowClient, name: str, artifact_root: str | None) -> str:
    """The experiment's id, creating it (artifacts under `artifact_root`) if it does not exist.

    No `artifact_root` (tracking=server): the server's default, so artifacts go through it.
    """
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    location = Path(artifact_root).resolve().as_uri() if artifact_root else None
    try:
        return client.create_experiment(name, artifact_location=location)
    except mlflow.exceptions.MlflowException:  # another process created it first
        return client.get_experiment_by_name(name).experiment_id


def run_name(cfg: DictConfig, overrides: list[str]) -> str:
    """e.g. 'rmsprop lr=0.001 seed=42', plus any other command-line overrides."""
    if cfg.tracking.get("run_name"):
        return str(cfg.tracking.run_name)
    impl = " scratch" if cfg.optimizer.get("impl") == "scratch" else ""
    parts = [f"{cfg.optimizer.name}{impl}", f"lr={cfg.optimizer.lr:g}"]
    skip = (
        "optimizer=",
        "optimizer.lr=",
        "optimizer.impl=",
        "seed=",
        "tracking.",
        "tracking=",
        "paths.",
        "hydra",
    )
    for override in overrides:
        key_value = override.lstrip("+~")
        if not key_value.startswith(skip):
            key, _, value = key_value.partition("=")
            parts.append(f"{key.split('.')[-1]}={value}")
    parts.append(f"seed={cfg.seed}")
    return " ".join(parts)


def flat_params(cfg: DictConfig) -> dict[str, str]:
    """The resolved config as dotted keys, with the optimizer class actually used."""
    container = OmegaConf.to_container(cfg, resolve=True)
    container.pop("hydra", None)
    container.pop("paths", None)
    flat: dict[str, str] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key != "_partial_":
                    walk(value, f"{prefix}{key}.")
        else:
            flat[prefix[:-1]] = str(node)

    walk(container, "")
    cls = optimizer_class(cfg.optimizer)
    flat["optimizer.class"] = f"{cls.__module__}.{cls.__qualname__}"
    return flat


def git_state() -> tuple[str, bool]:
    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=10
        ).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD") or "unknown"
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return "unknown", False
    return commit, dirty


def start_run(
    cfg: DictConfig,
    overrides: list[str],
    tags: dict[str, str],
    parent_run_id: str | None = None,
) -> tuple[MlflowClient, str]:
    """Create the MLflow run and record the config; returns (client, run id)."""
    with creation_lock(cfg.tracking.uri):  # parallel jobs may start on a fresh sqlite store
        client = MlflowClient(cfg.tracking.uri)
        if rank_zero_only.rank > 0:
            # A DDP rank > 0 logs nothing: rank 0 made the run. Under SLURM every rank is its own
            # task (no environment inherited from rank 0), so the id may be unknown here.
            return client, os.environ.get(RUN_ID_ENV, "")
        tracked = cfg.tracking
        experiment_id = ensure_experiment(client, tracked.experiment, tracked.artifact_root)
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
        "version.lightning": pl.__version__,
        "version.mlflow": mlflow.__version__,
        "overrides": " ".join(overrides)[:5000],  # a sweep's report groups runs by these
        **tags,
    }
    if parent_run_id:
        all_tags["mlflow.parentRunId"] = parent_run_id
    run_id = client.create_run(
        experiment_id, run_name=run_name(cfg, overrides), tags=all_tags
    ).info.run_id
    params = [Param(k, v[:6000]) for k, v in flat_params(cfg).items()]
    for start in range(0, len(params), 100):
        client.log_batch(run_id, params=params[start : start + 100])
    resolved = OmegaConf.to_container(cfg, resolve=True)
    resolved.pop("hydra", None)
    client.log_dict(run_id, resolved, "config.yaml")
    client.log_dict(run_id, {"overrides": list(overrides)}, "overrides.yaml")
    os.environ[RUN_ID_ENV] = run_id
    return client, run_id


def end_run(client: MlflowClient, run_id: str, status: str, error: BaseException | None = None):
    """Mark the run FINISHED / FAILED / KILLED; a failure's traceback becomes an artifact."""
    if rank_zero_only.rank > 0:
        return
    if error is not None:
        text = "".join(traceback.format_exception(type(error), error, error.__traceback__))
        try:
            client.set_tag(run_id, "error", f"{type(error).__name__}: {error}"[:1000])
            client.log_text(run_id, text, "traceback.txt")
        except Exception:  # the status matters more than the traceback artifact
            pass
    client.set_terminated(run_id, status)
    os.environ.pop(RUN_ID_ENV, None)


def log_model(uri: str, run_id: str, net: torch.nn.Module, example: torch.Tensor) -> None:
    """`mlflow.pytorch.log_model` with an input example, so the signature is recorded."""
    mlflow.set_tracking_uri(uri)
    torch_version = torch.__version__.split("+")[0]
    with mlflow.start_run(run_id=run_id):
        mlflow.pytorch.log_model(
            net.cpu().eval(),
            name="model",
            input_example=example.cpu().numpy(),
            # Pinning the requirement skips MLflow's slow dependency inference (a subprocess).
            pip_requirements=[f"torch=={torch_version}"],
        )


class MlflowLogger(Logger):
    """Writes Lightning's metrics into one existing MLflow run, batched.

    One `log_batch` per few seconds instead of one per logging step keeps the sqlite store's
    single writer free (parallel jobs) and the logging cost a small part of an epoch.
    """

    def __init__(self, flush_every_s: float = 5.0) -> None:
        super().__init__()
        self.client: MlflowClient | None = None
        self.run_id: str | None = None
        self.flush_every_s = flush_every_s
        self.pending: list[Metric] = []
        self.history: dict[str, list[tuple[int, float]]] = defaultdict(list)
        self.recorded_until: dict[str, int] = {}  # a resumed run's last step per metric
        self.last_flush = time.monotonic()

    def bind(self, client: MlflowClient, run_id: str) -> None:
        self.client, self.run_id = client, run_id

    def continue_run(self, history: dict[str, list[tuple[int, float]]]) -> None:
        """A resumed run: its points so far. Steps it has already recorded are not written again:
        a run that goes on from a checkpoint older than its last points (a SIGKILL mid-epoch
        leaves the epoch's start as the newest checkpoint) trains them again."""
        self.history.update(history)
        self.recorded_until = {key: max(s for s, _ in points) for key, points in history.items()}

    @property
    def name(self) -> str:
        return "mlflow"

    @property
    def version(self) -> str:
        return self.run_id or ""

    @rank_zero_only
    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        pass  # the whole resolved config is logged by start_run

    @rank_zero_only
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        timestamp = int(time.time() * 1000)
        for key, value in metrics.items():
            if (step or 0) <= self.recorded_until.get(key, -1):
                continue
            self.history[key].append((step or 0, float(value)))
            self.pending.append(Metric(key, float(value), timestamp, step or 0))
        if time.monotonic() - self.last_flush > self.flush_every_s:
            self.flush()

    @rank_zero_only
    def flush(self) -> None:
        if self.client is None:
            return
        while self.pending:
            batch, self.pending = self.pending[:1000], self.pending[1000:]
            self.client.log_batch(self.run_id, metrics=batch, synchronous=True)
        self.last_flush = time.monotonic()

    def save(self) -> None:
        # Lightning calls save() after every log_metrics: writing each time would undo the
        # batching (one sqlite write per logging step); the end of the run flushes the rest.
        if time.monotonic() - self.last_flush > self.flush_every_s:
            self.flush()

    def finalize(self, status: str) -> None:
        self.flush()  # the run's status is set by train(), which knows why it ended
