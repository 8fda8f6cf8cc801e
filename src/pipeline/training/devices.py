"""Devices: torch threads per process, per-device and global batch size, where DDP can run.

`trainer=cpu` (default), `trainer=gpu` (`trainer.precision=bf16-mixed` etc.) and `trainer=ddp`
(one process per device; gloo on CPU). Lightning's `ddp` strategy starts the other ranks by
running the same command line again (its subprocess-script launcher): that is right for
`python train.py trainer=ddp`, and wrong anywhere else (inside a Hydra multirun it would restart
the whole sweep in every rank; from Python it would re-run *that* program). `check_launch` refuses
those cases with a message saying what to do instead, before any MLflow run exists.
"""

from __future__ import annotations

import os

import pytorch_lightning as pl
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from pipeline.errors import ConfigError


def set_threads(threads: int | None) -> None:
    """torch intra-op threads of this process (`torch_threads`); None keeps torch's default.

    More than one thread for this small model is slower on 2 cores, and far slower when anything
    else runs on them (threads of one op wait on each other). Setting OMP_NUM_THREADS as well
    makes Lightning's DDP launcher keep the value instead of choosing its own.
    """
    if threads is None:
        return
    torch.set_num_threads(threads)
    os.environ["OMP_NUM_THREADS"] = str(threads)


def cluster_plugins() -> list:
    """Outside any cluster's job, the plain environment: left to look for one itself, Lightning
    warns on every run that `srun` is installed but unused (a login node, a one-node cluster).
    Inside one (SLURM, torchrun, LSF, MPI), Lightning picks it up as usual. (Kubeflow is never
    detected automatically: it is chosen with `trainer.plugins`.)"""
    from lightning_fabric.plugins.environments import (
        LightningEnvironment,
        LSFEnvironment,
        MPIEnvironment,
        TorchElasticEnvironment,
    )

    if any(key.startswith("SLURM_") for key in os.environ):
        return []
    others = (LSFEnvironment, MPIEnvironment, TorchElasticEnvironment)
    if any(environment.detect() for environment in others):
        return []
    return [LightningEnvironment()]


def batch_sizes(per_device: int, trainer: pl.Trainer) -> dict[str, str]:
    """Tags: `data.batch_size` is per process (device); one optimizer step sees the global one."""
    world = trainer.world_size
    accumulate = getattr(trainer, "accumulate_grad_batches", 1) or 1
    return {
        "batch_size.per_device": str(per_device),
        "batch_size.global": str(per_device * world * accumulate),
        "world_size": str(world),
    }


def check_launch(trainer_cfg: DictConfig, trainer: pl.Trainer) -> None:
    """Refuse DDP where its launcher would re-run the wrong command (see the module docstring)."""
    if trainer.world_size == 1 or not relaunches(trainer_cfg, trainer.world_size):
        return
    if trainer.strategy.cluster_environment.creates_processes_externally:
        return  # a rank started by that launcher (or by torchrun / SLURM): nothing is re-run
    if not HydraConfig.initialized():
        raise ConfigError(
            f"trainer=ddp ({type(trainer.strategy).__name__}, {trainer.num_devices} processes) "
            "starts its other processes by re-running the command line, so it only works from "
            "`python train.py trainer=ddp ...`; run that command (e.g. in a subprocess) instead "
            "of calling train() from Python"
        )
    if HydraConfig.get().mode == RunMode.MULTIRUN:
        raise ConfigError(MULTIRUN_MESSAGE)


MULTIRUN_MESSAGE = (
    "trainer=ddp cannot run inside a Hydra multirun (-m): every DDP process would re-run "
    "the whole sweep. Run each DDP job as its own command, e.g. "
    "`for opt in sgd adam; do python train.py trainer=ddp optimizer=$opt; done`, "
    "or sweep with trainer=cpu / trainer=gpu"
)


def relaunches(trainer_cfg: DictConfig, world_size: int | None = None) -> bool:
    """Whether this Trainer config has Lightning start its ranks by re-running the command
    (`world_size`: the processes of the Trainer it made, where one exists)."""
    strategy = str(trainer_cfg.get("strategy", "auto"))
    devices = trainer_cfg.get("devices", "auto")
    several = (isinstance(devices, int) and devices > 1) or OmegaConf.is_list(devices)
    several = several or (world_size or 1) > 1
    if strategy == "auto":
        return several or int(trainer_cfg.get("num_nodes", 1)) > 1
    return strategy.startswith("ddp") and not any(k in strategy for k in ("spawn", "fork"))


def check_multirun(cfg: DictConfig) -> None:
    """Called as a multirun starts: refuse a DDP sweep before any job or MLflow run exists.

    (A DDP value among the swept ones is caught per job by `check_launch`.) A cluster launcher
    (submitit on SLURM) starts every rank of a job itself, so nothing is re-run: allowed.
    """
    launcher = str(OmegaConf.select(cfg, "hydra.launcher._target_", default=""))
    if "submitit" in launcher and "Local" not in launcher:
        return
    if relaunches(cfg.trainer):
        raise ConfigError(MULTIRUN_MESSAGE)
