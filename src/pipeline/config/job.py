"""What Hydra tells a job: its command-line overrides and its output folder."""

from __future__ import annotations

import tempfile
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig


def hydra_overrides() -> list[str]:
    """The command-line overrides of this job (empty outside a Hydra app)."""
    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def output_dir(cfg: DictConfig) -> Path:
    try:
        return Path(cfg.paths.output_dir)
    except Exception:  # ${hydra:...} cannot resolve outside a Hydra app
        return Path(tempfile.mkdtemp(prefix="pipeline-"))
