"""Continue a run: `python train.py resume=<run id>` or `python train.py ckpt_path=<file>`.

The same MLflow run goes on from its last checkpoint:
- the config is the run's own (its `config.yaml` artifact); only what is given on this command
  line overrides it (`trainer.max_epochs=10`, `optimizer=adam` replaces the whole group);
- Lightning restores weights, optimizer state and step counters, so the metric step axis goes
  on where it stopped, without overlap;
- params are logged only where new; a value that changed is recorded as a tag
  `resume.changed.<key>` = "old -> new" (MLflow does not allow a param to change).
The checkpoint is the run's local `last.ckpt` when its folder is still on this machine (newest,
also after a SIGKILL), else the `checkpoints/last.ckpt` artifact.
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytorch_lightning as pl
import torch
from hydra.core.override_parser.overrides_parser import OverridesParser
from mlflow.entities import Param
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.utilities import rank_zero_only

from pipeline import runs, tracking
from pipeline.config import ConfigError

log = logging.getLogger(__name__)

CHECKPOINT_DIR_TAG = "checkpoint.dir"  # where the run's Lightning checkpoints are written
CKPT_RUN_KEY = "mlflow_run_id"  # stored inside every checkpoint, so `ckpt_path=` finds its run
OWN_KEYS = ("resume", "ckpt_path")  # never taken from the old run, never logged as changes


@dataclass
class ResumePoint:
    run_id: str | None  # the run to continue; None: a new run that starts from the checkpoint
    ckpt_path: str
    checkpoint_dir: Path | None  # the run's checkpoint folder, when it is still here


def prepare(cfg: DictConfig, overrides: list[str]) -> tuple[DictConfig, ResumePoint | None]:
    """(the config to train with, where to resume) - raises ConfigError before anything changes."""
    run_id, ckpt = cfg.get("resume"), cfg.get("ckpt_path")
    if not run_id and not ckpt:
        return cfg, None
    path = None
    if ckpt:
        path = Path(str(ckpt)).expanduser().resolve()
        if not path.is_file():
            raise ConfigError(f"ckpt_path={ckpt}: no such file; give a Lightning .ckpt file")
        run_id = run_id or _load(path).get(CKPT_RUN_KEY)
        if not run_id:
            return cfg, ResumePoint(None, str(path), None)
    run_id = str(run_id)
    client = MlflowClient(cfg.tracking.uri)
    try:
        run = client.get_run(run_id)
    except MlflowException:
        raise ConfigError(
            f"resume={run_id}: no such run in {cfg.tracking.uri}; copy the id from the UI or "
            "from the line 'MLflow run <id> started' (and check tracking.uri)"
        ) from None
    tags = run.data.tags
    if run.info.status == "RUNNING" and runs.owner_alive(tags):
        raise ConfigError(
            f"resume={run_id}: the run is still being written by pid {tags[runs.PID_TAG]} on "
            f"{tags[runs.HOST_TAG]}; stop that process first (its run then ends KILLED)"
        )
    merged = merge(run_config(client, run_id), cfg, overrides)
    folder = Path(tags[CHECKPOINT_DIR_TAG]) if CHECKPOINT_DIR_TAG in tags else None
    folder = folder if folder is not None and folder.is_dir() else None
    if path is None:
        path = _find_checkpoint(client, run_id, folder)
    done = epochs_done(_load(path))
    if done is not None and done >= merged.trainer.max_epochs:
        raise ConfigError(
            f"resume={run_id}: the run has already trained {done} epochs "
            f"(trainer.max_epochs={merged.trainer.max_epochs}); to train on, pass "
            f"trainer.max_epochs={done + 5} (or any number above {done})"
        )
    return merged, ResumePoint(run_id, str(path), folder)


def _load(path: Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:
        raise ConfigError(f"ckpt_path={path}: not a readable checkpoint ({error})") from None


def epochs_done(checkpoint: dict) -> int | None:
    """Training epochs finished in a Lightning checkpoint (the last one may lack its validation)."""
    try:
        return int(checkpoint["loops"]["fit_loop"]["epoch_progress"]["current"]["processed"])
    except (KeyError, TypeError):
        return None


def run_config(client: MlflowClient, run_id: str) -> DictConfig:
    try:
        with tempfile.TemporaryDirectory() as folder:
            return OmegaConf.load(client.download_artifacts(run_id, "config.yaml", folder))
    except (MlflowException, OSError):
        raise ConfigError(f"resume={run_id}: the run has no config.yaml artifact") from None


def merge(run_cfg: DictConfig, cfg: DictConfig, overrides: list[str]) -> DictConfig:
    """The run's config, with this command line's overrides and this machine's paths on top."""
    merged = OmegaConf.create(OmegaConf.to_container(run_cfg))
    for key in ("paths", "tracking.uri", "tracking.artifact_root", *OWN_KEYS):
        OmegaConf.update(merged, key, OmegaConf.select(cfg, key), merge=False, force_add=True)
    for override in OverridesParser.create().parse_overrides(overrides):
        key = override.key_or_group
        if key.startswith("hydra") or key in OWN_KEYS:
            continue
        if override.is_delete():
            parent, _, leaf = key.rpartition(".")
            node = OmegaConf.select(merged, parent) if parent else merged
            if node is not None and leaf in node:
                del node[leaf]
        else:  # the value as Hydra composed it (a group override brings its whole node)
            value = OmegaConf.select(cfg, key)
            OmegaConf.update(merged, key, value, merge=False, force_add=True)
    OmegaConf.set_struct(merged, True)
    return merged


def _find_checkpoint(client: MlflowClient, run_id: str, folder: Path | None) -> Path:
    if folder is not None and (folder / "last.ckpt").is_file():
        return folder / "last.ckpt"
    try:
        target = tempfile.mkdtemp(prefix="resume-")
        return Path(client.download_artifacts(run_id, "checkpoints/last.ckpt", target))
    except (MlflowException, OSError):
        raise ConfigError(
            f"resume={run_id}: the run has no checkpoint (no local last.ckpt, no artifact "
            "checkpoints/last.ckpt), so it cannot be continued; start a new run instead"
        ) from None


def reopen(
    cfg: DictConfig, point: ResumePoint, overrides: list[str], tags: dict[str, str]
) -> tuple[MlflowClient, str]:
    """Set the run RUNNING again and record what this resume changed; returns (client, run id)."""
    client = MlflowClient(cfg.tracking.uri)
    run_id = point.run_id
    if rank_zero_only.rank > 0:
        return client, run_id  # DDP: rank 0 reopens the run, the others only train
    run = client.get_run(run_id)
    old = run.data.params
    new = {k: v[:6000] for k, v in tracking.flat_params(cfg).items() if k not in OWN_KEYS}
    fresh = [Param(k, v) for k, v in new.items() if k not in old]
    for start in range(0, len(fresh), 100):
        client.log_batch(run_id, params=fresh[start : start + 100])
    count = int(run.data.tags.get("resume.count", "0")) + 1
    all_tags = {
        **tags,
        "resume.count": str(count),
        "resume.checkpoint": point.ckpt_path,
        **{f"resume.changed.{k}": f"{old[k]} -> {v}" for k, v in new.items() if old.get(k, v) != v},
    }
    for key, value in all_tags.items():
        client.set_tag(run_id, key, value)
    client.update_run(run_id, status="RUNNING")
    resolved = OmegaConf.to_container(cfg, resolve=True)
    client.log_dict(run_id, resolved, "config.yaml")  # the config the run now trains with
    client.log_dict(run_id, {"overrides": list(overrides)}, f"resume/{count}/overrides.yaml")
    os.environ[tracking.RUN_ID_ENV] = run_id  # DDP ranks > 0 log into the same run
    log.info("resuming MLflow run %s from %s", run_id, point.ckpt_path)
    return client, run_id


def history(client: MlflowClient, run_id: str) -> dict[str, list[tuple[int, float]]]:
    """The run's metrics so far, so that the curves and final numbers cover the whole run."""
    run = client.get_run(run_id)
    return {
        key: [(m.step, m.value) for m in client.get_metric_history(run_id, key)]
        for key in run.data.metrics
    }


class RunIdInCheckpoint(pl.Callback):
    """Writes the MLflow run id into every checkpoint (`ckpt_path=` then knows the run)."""

    def __init__(self, logger: tracking.MlflowLogger) -> None:
        self.logger = logger

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        if self.logger.run_id:
            checkpoint[CKPT_RUN_KEY] = self.logger.run_id
