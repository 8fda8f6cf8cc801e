"""Check a composed config before anything is created, so bad input never leaves a half-made run.

Hydra already rejects unknown presets and unknown keys; this checks values: types and ranges.
Every message names the key, the bad value, what is allowed, and an example of a fix.
"""

from __future__ import annotations

import inspect
import pydoc

import torch
from omegaconf import DictConfig, OmegaConf

from pipeline.config.choices import ACTIVATIONS, DATASETS, LOSSES, SOURCES
from pipeline.config.rules import (
    MAX_HIDDEN_SIZE,
    MAX_SEED,
    check,
    finite_floats,
    is_int,
    is_number,
    number,
    positive_int,
)
from pipeline.config.schedule import validate_scheduler
from pipeline.config.tracking import validate_tracking
from pipeline.config.trainer import validate_devices, validate_trainer_keys, validate_trainer_values
from pipeline.errors import ConfigError
from pipeline.optim.base import UnsupportedOption
from pipeline.optim.factory import IMPLS, META_KEYS, SCRATCH, optimizer_factory
from pipeline.tracking.tags import config_tags

__all__ = [
    "ConfigError",
    "validate",
    "validate_data_fit",
    "validate_optimizer",
    "validate_tracking",
]


def validate_optimizer(cfg: DictConfig) -> None:
    opt = cfg.optimizer
    check(
        cfg,
        "optimizer.impl",
        opt.get("impl", "torch") in IMPLS,
        f"choose one of {', '.join(IMPLS)}",
        "torch",
    )
    torch_cls = optimizer_class_checked(cfg)
    if opt.get("impl") == "scratch" and torch_cls not in SCRATCH:
        raise ConfigError(
            f"optimizer.impl=scratch: no from-scratch version of {torch_cls.__name__} exists; "
            "use optimizer.impl=torch"
        )
    signature = inspect.signature(torch_cls).parameters
    accepted = set(signature) - {"params"}
    any_key = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in signature.values())
    for key in opt:
        if key not in META_KEYS and key not in accepted and not any_key:
            raise ConfigError(
                f"optimizer.{key} is not an argument of {torch_cls.__name__}; "
                f"it takes {', '.join(sorted(accepted))}"
            )
    check_argument_types(cfg, signature)
    number(cfg, "optimizer.lr", 0, None, "0.01", low_open=True)
    ranges = {  # key: (low, high, example, low_open, high_open)
        "momentum": (0, 1, "0.9", False, True),
        "dampening": (0, 1, "0.0", False, False),
        "weight_decay": (0, None, "1e-4", False, True),
        "alpha": (0, 1, "0.99", False, False),
        "rho": (0, 1, "0.9", False, False),
        "eps": (0, None, "1e-8", True, True),
        "lr_decay": (0, None, "0.0", False, True),
        "initial_accumulator_value": (0, None, "0.0", False, True),
        "momentum_decay": (0, None, "0.004", False, True),
        "d_coef": (0, None, "1.0", True, True),
        "d0": (0, None, "1e-6", True, True),
        "adamw_eps": (0, None, "1e-8", True, True),
        "warmup_steps": (0, None, "0", False, True),
        "ns_steps": (1, None, "5", False, True),
    }
    for key, (low, high, example, low_open, high_open) in ranges.items():
        if key in opt:
            number(cfg, f"optimizer.{key}", low, high, example, low_open, high_open)
    defaults = {k: p.default for k, p in inspect.signature(torch_cls).parameters.items()}
    finite_floats(cfg, "optimizer", defaults)  # an added +optimizer.<key>=inf as well
    for key in ("betas", "adamw_betas"):
        if key in opt:
            betas = opt[key]
            ok = (
                OmegaConf.is_list(betas)
                and len(betas) == 2
                and all(is_number(b) and 0 <= b < 1 for b in betas)
            )
            check(cfg, f"optimizer.{key}", ok, "must be two numbers in [0, 1)", "[0.9,0.999]")
    if "adjust_lr_fn" in opt:
        allowed = "choose one of original, match_rms_adamw, or null (original)"
        ok = opt.adjust_lr_fn in MUON_LR_FNS
        check(cfg, "optimizer.adjust_lr_fn", ok, allowed, "match_rms_adamw")
    for flag in ("nesterov", "centered", "amsgrad"):
        if flag in opt:
            check(
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


MUON_LR_FNS = (None, "original", "match_rms_adamw")  # torch.optim.Muon's adjust_lr_fn


def optimizer_class_checked(cfg: DictConfig) -> type:
    """The torch-side class optimizer._target_ names (a user's own too), or ConfigError."""
    opt = cfg.optimizer
    if OmegaConf.is_missing(opt, "_target_"):
        raise ConfigError(
            "optimizer._target_ is not set: name your optimizer class, e.g. "
            "optimizer=custom optimizer._target_=my_pkg.MyOpt"
        )
    target = str(opt._target_)
    try:  # pydoc.locate: None when nothing is there; hydra's get_class also logs an error
        cls = pydoc.locate(target)
        reason = "no such module or attribute"
    except pydoc.ErrorDuringImport as error:
        cls, reason = None, f"importing it fails: {error.exc.__name__}: {error.value}"
    if cls is None:
        raise ConfigError(
            f"optimizer._target_={target}: {reason[:200]}; give the dotted path of an "
            "optimizer class importable here, e.g. my_pkg.MyOpt (is its package installed, "
            "or on PYTHONPATH?)"
        )
    if not (isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer)):
        raise ConfigError(
            f"optimizer._target_={target} is not a torch.optim.Optimizer subclass; give one, "
            "e.g. torch.optim.SGD"
        )
    return cls


def check_argument_types(cfg: DictConfig, signature: dict[str, inspect.Parameter]) -> None:
    """A key whose default in the class's signature is a bool takes a bool; one annotated
    `int` takes an int (a number elsewhere fails deep inside the optimizer, or not at all)."""
    for key, value in cfg.optimizer.items():
        if key not in signature:
            continue
        default, annotation = signature[key].default, signature[key].annotation
        if isinstance(default, bool):
            ok = isinstance(value, bool)
            check(cfg, f"optimizer.{key}", ok, "must be true or false", str(default).lower())
        elif annotation in (int, "int"):
            check(cfg, f"optimizer.{key}", is_int(value), "must be an integer", str(default))


def validate(cfg: DictConfig, lightning: bool = True) -> None:
    """Raise ConfigError on the first bad value.

    lightning=False leaves out the last check, the trainer's keys, which needs Lightning imported
    (seconds): train.py checks the rest before it loads the training code, so that bad input
    fails fast; train() then checks everything.
    """
    validate_optimizer(cfg)
    validate_scheduler(cfg)

    check(
        cfg,
        "model.activation",
        cfg.model.activation in ACTIVATIONS,
        f"choose one of {', '.join(ACTIVATIONS)}",
        "relu",
    )
    check(
        cfg,
        "model.loss",
        cfg.model.loss in LOSSES,
        f"choose one of {', '.join(LOSSES)}",
        "cross_entropy",
    )
    hidden = cfg.model.hidden_sizes
    ok = OmegaConf.is_list(hidden) and all(is_int(h) and 0 < h <= MAX_HIDDEN_SIZE for h in hidden)
    check(
        cfg,
        "model.hidden_sizes",
        ok,
        f"must be a list of integers in [1, {MAX_HIDDEN_SIZE}]",
        "[200]",
    )
    positive_int(cfg, "model.input_size", "784")  # and it must fit the data: validate_data_fit
    positive_int(cfg, "model.num_classes", "10")

    check(
        cfg, "data.name", cfg.data.name in DATASETS, f"choose one of {', '.join(DATASETS)}", "mnist"
    )
    check(
        cfg,
        "data.source",
        cfg.data.source in SOURCES,
        f"choose one of {', '.join(SOURCES)}",
        "auto",
    )
    positive_int(cfg, "data.batch_size", "64")
    positive_int(cfg, "data.samples_per_group", "8192")
    val_size = cfg.data.val_size
    ok = (isinstance(val_size, float) and 0 < val_size < 1) or (
        isinstance(val_size, int) and not isinstance(val_size, bool) and val_size >= 1
    )
    check(cfg, "data.val_size", ok, "a fraction in (0, 1) or a count >= 1", "0.1")
    number(cfg, "data.std", 0, None, "0.5", low_open=True)
    number(cfg, "data.mean", float("-inf"), None, "0.5")
    if cfg.get("diverge_factor") is not None:
        number(cfg, "diverge_factor", 1, None, "1000", low_open=True)

    threads = cfg.get("torch_threads")
    ok = threads is None or (
        isinstance(threads, int) and not isinstance(threads, bool) and threads > 0
    )
    check(cfg, "torch_threads", ok, "must be an integer > 0 or null (torch's default)", "1")
    if cfg.get("probe") is not None:  # training.probe; absent from configs stored before it
        every = OmegaConf.select(cfg, "probe.every_n_steps")
        ok = every is None or (is_int(every) and every >= 0)
        check(cfg, "probe.every_n_steps", ok, "an integer >= 0 (0: off)", "50")
        positive_int(cfg, "probe.examples", "2000")
    positive_int(cfg, "trainer.max_epochs", "5")
    positive_int(cfg, "trainer.log_every_n_steps", "10")
    for split in ("train", "val", "test"):  # applied by the data module (data.Groups), in batches
        key = f"trainer.limit_{split}_batches"
        limit = OmegaConf.select(cfg, key)
        ok = limit is None or (
            (isinstance(limit, float) and 0 <= limit <= 1)
            or (isinstance(limit, int) and not isinstance(limit, bool) and limit >= 0)
        )
        check(cfg, key, ok, "a share in [0, 1], a count of batches >= 0, or null (all)", "20")
        if split == "train":  # 0 batches trains nothing: no checkpoint to test at the end
            ok = limit is None or limit > 0
            check(cfg, key, ok, "it must train: a share in (0, 1] or a count >= 1", "20")
    seed = cfg.seed
    check(
        cfg,
        "seed",
        is_int(seed) and 0 <= seed <= MAX_SEED,
        f"must be an integer in [0, {MAX_SEED}] (numpy's seed range)",
        "42",
    )
    for group in ("model", "data", "trainer"):
        finite_floats(cfg, group)

    validate_devices(cfg)
    validate_tracking(cfg)

    config_tags(cfg)  # tracking.tags: scalars only
    if lightning:
        validate_trainer_keys(cfg)
        validate_trainer_values(cfg)


def validate_data_fit(cfg: DictConfig, tensors: dict[str, tuple[torch.Tensor, torch.Tensor]]):
    """The model's input and output sizes fit the loaded data (`datamodule.tensors`): checked
    once the data is loaded, before the MLflow run exists."""
    inputs = {x.shape[1] for x, _ in tensors.values()}
    labels = [y for _, y in tensors.values() if len(y)]
    low = min(int(y.min()) for y in labels)
    high = max(int(y.max()) for y in labels)
    name = cfg.data.name
    [size] = inputs
    check(
        cfg,
        "model.input_size",
        cfg.model.input_size == size,
        f"the {name} inputs have {size} values each",
        str(size),
    )
    check(
        cfg,
        "model.num_classes",
        low >= 0 and cfg.model.num_classes > high,
        f"the {name} labels run from {low} to {high}, so at least {high + 1} outputs are needed",
        str(high + 1),
    )
