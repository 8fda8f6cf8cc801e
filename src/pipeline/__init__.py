"""Train the MNIST MLP under many optimizer settings and record every run in MLflow."""

import os
from pathlib import Path

from omegaconf import OmegaConf

PROJECT_ROOT = Path(__file__).resolve().parents[2]

# conf/paths/default.yaml uses ${pipeline_root:} so that the store and data paths are absolute.
OmegaConf.register_new_resolver("pipeline_root", lambda: str(PROJECT_ROOT), replace=True)

# Offline by default: MLflow's usage telemetry would try to reach the internet on every run.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
