"""Check a composed config before anything is created, so bad input never leaves a half-made run.

Hydra already rejects unknown presets and unknown keys; this checks values: types and ranges.
Every message names the key, the bad value, what is allowed, and an example of a fix.
"""

from __future__ import annotations

import inspect
import os
import tempfile
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from pipeline.config.choices import ACTIVATIONS, DATASETS, LOSSES, SOURCES
from pipeline.optim.base import UnsupportedOption
from pipeline.optim.factory import IMPLS, META_KEYS, SCRATCH, optimizer_class, optimizer_factory


class ConfigError(ValueError):
    """A config value is wrong; the message says which and how to fix it."""


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _check(cfg: DictConfig, key: str, ok: bool, allowed: str, example: str) -> None:
    if not ok:
        value = OmegaConf.select(cfg, key)
        raise ConfigError(f"{key}={value!r} is not allowed: {allowed} (e.g. {key}={example})")


def _number(
    cfg: DictConfig,
    key: str,
    low: float,
    high: float | None,
    example: str,
    low_open: bool = False,
    high_open: bool = True,
) -> None:
    value = OmegaConf.select(cfg, key)
    ok = _is_number(value) and (value > low if low_open else value >= low)
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    interval = (
        f"{'(' if low_open else '['}{low}, {'inf' if high is None else high}"
        f"{')' if high_open or high is None else ']'}"
    )
    _check(cfg, key, ok, f"must be a number in {interval}", example)


def _positive_int(cfg: DictConfig, key: str, example: str) -> None:
    value = OmegaConf.select(cfg, key)
    ok = isinstance(value, int) and not isinstance(value, bool) and value > 0
    _check(cfg, key, ok, "must be an integer > 0", example)


def validate_optimizer(cfg: DictConfig) -> None:
    opt = cfg.optimizer
    _check(
        cfg,
        "optimizer.impl",
        opt.get("impl", "torch") in IMPLS,
        f"choose one of {', '.join(IMPLS)}",
        "torch",
    )
    torch_cls = optimizer_class(OmegaConf.merge(opt, {"impl": "torch"}))
    if opt.get("impl") == "scratch" and torch_cls not in SCRATCH:
        raise ConfigError(
            f"optimizer.impl=scratch: no from-scratch version of {torch_cls.__name__} exists; "
            "use optimizer.impl=torch"
        )
    accepted = set(inspect.signature(torch_cls).parameters) - {"params"}
    for key in opt:
        if key not in META_KEYS and key not in accepted:
            raise ConfigError(
                f"optimizer.{key} is not an argument of {torch_cls.__name__}; "
                f"it takes {', '.join(sorted(accepted))}"
            )
    _number(cfg, "optimizer.lr", 0, None, "0.01", low_open=True)
    ranges = {  # key: (low, high, example, low_open, high_open)
        "momentum": (0, 1, "0.9", False, True),
        "dampening": (0, 1, "0.0", False, False),
        "weight_decay": (0, None, "1e-4", False, True),
        "alpha": (0, 1, "0.99", False, False),
        "rho": (0, 1, "0.9", False, False),
        "eps": (0, None, "1e-8", True, True),
        "lr_decay": (0, None, "0.0", False, True),
        "initial_accumulator_value": (0, None, "0.0", False, True),
    }
    for key, (low, high, example, low_open, high_open) in ranges.items():
        if key in opt:
            _number(cfg, f"optimizer.{key}", low, high, example, low_open, high_open)
    if "betas" in opt:
        betas = opt.betas
        ok = (
            OmegaConf.is_list(betas)
            and len(betas) == 2
            and all(_is_number(b) and 0 <= b < 1 for b in betas)
        )
        _check(cfg, "optimizer.betas", ok, "must be two numbers in [0, 1)", "[0.9,0.999]")
    for flag in ("nesterov", "centered", "amsgrad"):
        if flag in opt:
            _check(
                cfg,
                f"optimizer.{flag}",
                isinstance(opt[flag], bool),
                "must be true or false",
                "true",
            )
    if opt.get("nesterov") and not (opt.get("momentum", 0) > 0 and opt.get("dampening", 0) == 0):
        raise ConfigError(
            "optimizer.nesterov=true needs optimizer.momentum > 0 and optimizer.dampening=0 "
            "(e.g. optimizer=nesterov)"
        )
    if opt.get("impl") == "scratch":
        # Build it once on a dummy parameter: an option the from-scratch class does not
        # implement (e.g. +optimizer.fused=true) fails here, before any run exists.
        try:
            optimizer_factory(opt)([torch.zeros(1, requires_grad=True)])
        except UnsupportedOption as error:
            raise ConfigError(str(error)) from None


def validate(cfg: DictConfig, lightning: bool = True) -> None:
    """Raise ConfigError on the first bad value.

    lightning=False leaves out the last check, the trainer's keys, which needs Lightning imported
    (seconds): train.py checks the rest before it loads the training code, so that bad input
    fails fast; train() then checks everything.
    """
    validate_optimizer(cfg)

    _check(
        cfg,
        "model.activation",
        cfg.model.activation in ACTIVATIONS,
        f"choose one of {', '.join(ACTIVATIONS)}",
        "relu",
    )
    _check(
        cfg,
        "model.loss",
        cfg.model.loss in LOSSES,
        f"choose one of {', '.join(LOSSES)}",
        "cross_entropy",
    )
    hidden = cfg.model.hidden_sizes
    ok = OmegaConf.is_list(hidden) and all(isinstance(h, int) and h > 0 for h in hidden)
    _check(cfg, "model.hidden_sizes", ok, "must be a list of integers > 0", "[200]")

    _check(
        cfg, "data.name", cfg.data.name in DATASETS, f"choose one of {', '.join(DATASETS)}", "mnist"
    )
    _check(
        cfg,
        "data.source",
        cfg.data.source in SOURCES,
        f"choose one of {', '.join(SOURCES)}",
        "auto",
    )
    _positive_int(cfg, "data.batch_size", "64")
    _positive_int(cfg, "data.samples_per_group", "8192")
    val_size = cfg.data.val_size
    ok = (isinstance(val_size, float) and 0 < val_size < 1) or (
        isinstance(val_size, int) and not isinstance(val_size, bool) and val_size >= 1
    )
    _check(cfg, "data.val_size", ok, "a fraction in (0, 1) or a count >= 1", "0.1")
    _number(cfg, "data.std", 0, None, "0.5", low_open=True)
    _number(cfg, "data.mean", float("-inf"), None, "0.5")
    if cfg.get("diverge_factor") is not None:
        _number(cfg, "diverge_factor", 1, None, "1000", low_open=True)

    threads = cfg.get("torch_threads")
    ok = threads is None or (
        isinstance(threads, int) and not isinstance(threads, bool) and threads > 0
    )
    _check(cfg, "torch_threads", ok, "must be an integer > 0 or null (torch's default)", "1")
    _positive_int(cfg, "trainer.max_epochs", "5")
    _positive_int(cfg, "trainer.log_every_n_steps", "10")
    for split in ("train", "val", "test"):  # applied by the data module (data.Groups), in batches
        key = f"trainer.limit_{split}_batches"
        limit = OmegaConf.select(cfg, key)
        ok = limit is None or (
            (isinstance(limit, float) and 0 <= limit <= 1)
            or (isinstance(limit, int) and not isinstance(limit, bool) and limit >= 0)
        )
        _check(cfg, key, ok, "a share in [0, 1], a count of batches >= 0, or null (all)", "20")
    seed = cfg.seed
    _check(
        cfg,
        "seed",
        isinstance(seed, int) and not isinstance(seed, bool) and seed >= 0,
        "must be an integer >= 0",
        "42",
    )

    validate_devices(cfg)
    validate_tracking(cfg)
    if lightning:
        validate_trainer_keys(cfg)


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


def validate_devices(cfg: DictConfig) -> None:
    """No more devices than this machine has."""
    accelerator = str(cfg.trainer.get("accelerator", "auto"))
    devices = cfg.trainer.get("devices", "auto")
    gpus = torch.cuda.device_count()
    if accelerator in ("gpu", "cuda") and gpus == 0:
        raise ConfigError(
            f"trainer.accelerator={accelerator} but no CUDA GPU is visible on this machine; "
            "use trainer=cpu (or trainer.accelerator=cpu)"
        )
    on_gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and gpus > 0)
    available, kind = (gpus, "CUDA GPUs") if on_gpu else (os.cpu_count() or 1, "CPU cores")
    if isinstance(devices, int) and not isinstance(devices, bool) and devices > available:
        raise ConfigError(
            f"trainer.devices={devices} is more than this machine has ({available} {kind}); "
            f"use trainer.devices={available} or fewer (or trainer.devices=auto)"
        )


def validate_tracking(cfg: DictConfig) -> None:
    """The store must be writable (sqlite) or answer (http): checked before any run is made."""
    uri = str(cfg.tracking.uri)
    example = "sqlite:////tmp/mlruns/mlflow.db"
    if uri.startswith("sqlite:///"):
        db = Path(uri.removeprefix("sqlite:///"))
        problem = _unwritable(db.parent)
        if problem is None and db.exists() and not os.access(db, os.R_OK | os.W_OK):
            problem = f"the database {db} is read-only"
        _check(cfg, "tracking.uri", problem is None, f"{problem}", example)
    elif uri.startswith(("http://", "https://")):
        problem = _unreachable(uri)
        _check(
            cfg,
            "tracking.uri",
            problem is None,
            f"the tracking server does not answer ({problem}); start it (make server) or point "
            "tracking.uri at a reachable server or a local store",
            example,
        )


def _unwritable(folder: Path) -> str | None:
    """Why files cannot be created in `folder` (None if they can); a real write, not os.access,
    which says yes to root and no to nothing on a read-only mount."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-check-"):
            pass
    except OSError as error:
        return f"the store folder {folder} cannot be created or written ({error.strerror})"
    return None


def _unreachable(uri: str, timeout_s: float = 5.0) -> str | None:
    """Why the MLflow server at `uri` cannot be reached (None if it answers at all).

    One plain request with a short timeout: MLflow's own client retries for minutes first.
    """
    import urllib.error
    import urllib.request

    try:
        urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout_s).close()
    except urllib.error.HTTPError:
        return None  # it answered; an older server may lack /health
    except (OSError, ValueError) as error:
        return str(getattr(error, "reason", error))
    return None
