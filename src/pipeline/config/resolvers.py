"""The resolvers conf/ uses; registered by every entry point before Hydra composes a config."""

from __future__ import annotations

import os
import warnings

from omegaconf import OmegaConf

from pipeline import PROJECT_ROOT


def register_resolvers() -> None:
    # conf/paths/default.yaml: the store and data paths are absolute, wherever a run starts.
    OmegaConf.register_new_resolver("pipeline_root", lambda: str(PROJECT_ROOT), replace=True)
    # conf/train.yaml names a run's and a sweep's folder by its start time and pid: runs or
    # sweeps started in the same second must not share one (their checkpoints and a sweep's
    # parent run id would mix). Cached like Hydra's ${now:}, so that a sweep's jobs in other
    # processes (joblib, SLURM) get the sweep's pid from its config, not their own.
    OmegaConf.register_new_resolver("pid", os.getpid, use_cache=True, replace=True)
    # conf/tracking/mlflow.yaml: a database store keeps artifacts in a local folder; a server
    # (http, https) keeps its own.
    OmegaConf.register_new_resolver(
        "pipeline_local_artifacts",
        lambda uri, folder: None if str(uri).startswith(("http://", "https://")) else folder,
        replace=True,
    )
    # conf/hydra/launcher/submitit_slurm.yaml: GPUs a SLURM job asks for on each node.
    OmegaConf.register_new_resolver(
        "pipeline_gpus",
        lambda accelerator, devices: 0 if str(accelerator) == "cpu" else devices,
        replace=True,
    )
    # ... and its memory per node: so much per task, times the tasks on a node.
    OmegaConf.register_new_resolver(
        "pipeline_times", lambda per_task, tasks: int(per_task) * int(tasks), replace=True
    )
    quiet_schema_warning()


def quiet_schema_warning() -> None:
    """conf/hydra/launcher/submitit_slurm.yaml extends the launcher plugin's schema of the same
    name on purpose, so that `hydra/launcher=submitit_slurm` carries the project's settings;
    Hydra 1.3 merges the two but warns that this "will be removed in Hydra 1.2" wherever it
    composes: on the login node, and again in each SLURM job (its log.err)."""
    warnings.filterwarnings(
        "ignore",
        message=r"\s*'hydra/launcher/submitit_slurm' is validated against ConfigStore schema",
    )
