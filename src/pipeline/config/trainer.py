"""Checks of the `trainer` group against what Lightning accepts and what this machine has."""

from __future__ import annotations

import inspect
import os
import typing

import torch
from omegaconf import DictConfig, OmegaConf

from pipeline.config.rules import check, is_int
from pipeline.errors import ConfigError


def validate_trainer_keys(cfg: DictConfig) -> None:
    """Trainer keys Lightning knows."""
    import pytorch_lightning as pl

    accepted = set(inspect.signature(pl.Trainer).parameters) - {"callbacks", "logger"}
    for key in cfg.trainer:
        if key != "_target_" and key not in accepted:
            raise ConfigError(
                f"trainer.{key} is not an argument of pytorch_lightning.Trainer; "
                f"it takes {', '.join(sorted(accepted))}"
            )


def validate_trainer_values(cfg: DictConfig) -> None:
    """trainer.accelerator and trainer.precision as this Lightning accepts them: the names come
    from Lightning itself (its accelerator registry, the Trainer's `precision` type)."""
    import pytorch_lightning as pl
    from pytorch_lightning.accelerators import AcceleratorRegistry

    accelerator = cfg.trainer.get("accelerator", "auto")
    registered = sorted(AcceleratorRegistry.available_accelerators())
    here = [name for name in registered if AcceleratorRegistry[name]["accelerator"].is_available()]
    # "auto" and "gpu" (CUDA or MPS) are the Trainer's own aliases on top of the registry.
    names = ["auto", "gpu", *registered]
    check(
        cfg,
        "trainer.accelerator",
        accelerator in names,
        f"choose one of {', '.join(names)}",
        "cpu",
    )
    if accelerator in registered and accelerator not in here:
        cls = AcceleratorRegistry[accelerator]["accelerator"].__name__
        check(
            cfg,
            "trainer.accelerator",
            False,
            f"no {accelerator} device is available on this machine ({cls}); "
            f"choose one of auto, {', '.join(here)}",
            "cpu",
        )
    precision = cfg.trainer.get("precision", "32-true")
    accepted = _literals(typing.get_type_hints(pl.Trainer.__init__)["precision"])
    ok = precision is None or (
        (is_int(precision) or isinstance(precision, str)) and precision in accepted
    )
    shown = dict.fromkeys(str(value) for value in accepted)  # 16 and "16" once
    check(cfg, "trainer.precision", ok, f"choose one of {', '.join(shown)}", "32-true")


def _literals(hint: object) -> list:
    """The values of every Literal inside a type hint (Optional[Union[Literal[...], ...]])."""
    if typing.get_origin(hint) is typing.Literal:
        return list(typing.get_args(hint))
    return [value for arg in typing.get_args(hint) for value in _literals(arg)]


def validate_devices(cfg: DictConfig) -> None:
    """A number (or list) of devices Lightning takes, and no more than this machine has."""
    accelerator = str(cfg.trainer.get("accelerator", "auto"))
    devices = cfg.trainer.get("devices", "auto")
    gpus = torch.cuda.device_count()
    if accelerator in ("gpu", "cuda") and gpus == 0:
        raise ConfigError(
            f"trainer.accelerator={accelerator} but no CUDA GPU is visible on this machine; "
            "use trainer=cpu (or trainer.accelerator=cpu)"
        )
    on_gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and gpus > 0)
    if OmegaConf.is_list(devices):
        devices = list(devices)
    if isinstance(devices, str) and devices.strip().lstrip("-").isdigit():
        devices = int(devices)  # Lightning reads "2" as 2 (and "-1" as all GPUs)
    elif on_gpu and isinstance(devices, str) and devices != "auto":
        # "0,1": GPU indices as a string
        parts = [part.strip() for part in devices.split(",") if part.strip()]
        if parts and all(part.isdigit() for part in parts):
            devices = [int(part) for part in parts]
    if on_gpu:
        ok = devices == "auto" or (
            (is_int(devices) and (devices > 0 or devices == -1))
            or (
                isinstance(devices, list)
                and len(devices) > 0
                and all(is_int(d) and d >= 0 for d in devices)
                and len(set(devices)) == len(devices)
            )
        )
        allowed = "must be an integer > 0, -1 (all GPUs), a list of GPU indices or auto"
    else:
        ok = devices == "auto" or (is_int(devices) and devices > 0)
        allowed = f"must be an integer > 0 or auto on {accelerator}"
    check(cfg, "trainer.devices", ok, allowed, "1")
    available, kind = (gpus, "CUDA GPUs") if on_gpu else (os.cpu_count() or 1, "CPU cores")
    if is_int(devices) and devices > available:
        raise ConfigError(
            f"trainer.devices={devices} is more than this machine has ({available} {kind}); "
            f"use trainer.devices={available} or fewer (or trainer.devices=auto)"
        )
    if isinstance(devices, list) and max(devices) >= gpus:
        raise ConfigError(
            f"trainer.devices={devices} names a GPU this machine does not have (it has {gpus}, "
            f"indices 0 to {gpus - 1}); use trainer.devices=[0] (or trainer.devices=auto)"
        )
