"""What Hydra tells a job: its command-line overrides and its output folder."""

from __future__ import annotations

import tempfile
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig


def hydra_overrides() -> list[str]:
    """The command-line overrides of this job (empty outside a Hydra app)."""
    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def runs_beside_others() -> bool:
    """A sweep's job whose launcher runs several at once (joblib, SLURM), not one at a time in
    the sweep's own process (Hydra's basic launcher)."""
    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return False
    return not str(HydraConfig.get().launcher.get("_target_", "")).endswith(".BasicLauncher")


def output_dir(cfg: DictConfig) -> Path:
    try:
        return Path(cfg.paths.output_dir)
    except Exception:  # ${hydra:...} cannot resolve outside a Hydra app
        return Path(tempfile.mkdtemp(prefix="pipeline-"))
