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
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from hydra.core.override_parser.overrides_parser import OverridesParser
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf

from pipeline.config.checks import ConfigError
from pipeline.tracking import owners
from pipeline.training import grouped
from pipeline.training.callbacks import CKPT_RUN_KEY

log = logging.getLogger(__name__)

CHECKPOINT_DIR_TAG = "checkpoint.dir"  # where the run's Lightning checkpoints are written
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
    if run.info.status == "RUNNING" and owners.owner_alive(tags):
        raise ConfigError(
            f"resume={run_id}: the run is still being written by pid {tags[owners.PID_TAG]} on "
            f"{tags[owners.HOST_TAG]}; stop that process first (its run then ends KILLED)"
        )
    merged = merge(run_config(client, run_id), cfg, overrides)
    folder = Path(tags[CHECKPOINT_DIR_TAG]) if CHECKPOINT_DIR_TAG in tags else None
    folder = folder if folder is not None and folder.is_dir() else None
    if path is None:
        path = _find_checkpoint(client, run_id, folder)
    done = grouped.epochs_done(_load(path))
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


def history(client: MlflowClient, run_id: str) -> dict[str, list[tuple[int, float]]]:
    """The run's metrics so far, so that the curves and final numbers cover the whole run."""
    run = client.get_run(run_id)
    return {
        key: [(m.step, m.value) for m in client.get_metric_history(run_id, key)]
        for key in run.data.metrics
    }
