"""Train the MNIST MLP under many optimizer settings and record every run in MLflow."""

import os
import warnings
from pathlib import Path

from omegaconf import OmegaConf

PROJECT_ROOT = Path(__file__).resolve().parents[2]

# conf/paths/default.yaml uses ${pipeline_root:} so that the store and data paths are absolute.
OmegaConf.register_new_resolver("pipeline_root", lambda: str(PROJECT_ROOT), replace=True)

# conf/train.yaml names a run's folder by its start time and ${pid:}: jobs started in the same
# second must not share one (their checkpoints would mix, and resume would read another's).
OmegaConf.register_new_resolver("pid", os.getpid, replace=True)

# conf/hydra/launcher/submitit_slurm.yaml: GPUs a SLURM job asks for on each node.
OmegaConf.register_new_resolver(
    "pipeline_gpus",
    lambda accelerator, devices: 0 if str(accelerator) == "cpu" else devices,
    replace=True,
)
# That file extends the launcher plugin's schema of the same name on purpose, so that
# `hydra/launcher=submitit_slurm` carries the project's settings; Hydra 1.3 still merges the two
# but warns on every start that this "will be removed in Hydra 1.2".
warnings.filterwarnings(
    "ignore", message=r"\s*'hydra/launcher/submitit_slurm' is validated against ConfigStore schema"
)
# Lightning's batches are groups of minibatches (data.Groups) and `log_every_n_steps` counts
# optimizer steps, so its warning that an epoch has fewer batches than that interval is wrong here.
warnings.filterwarnings("ignore", message=r".*is smaller than the logging interval")

# Offline by default: MLflow's usage telemetry would try to reach the internet on every run.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
