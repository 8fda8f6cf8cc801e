"""Check a composed config before anything is created, so bad input never leaves a half-made run.

Hydra already rejects unknown presets and unknown keys; this checks values: types and ranges.
Every message names the key, the bad value, what is allowed, and an example of a fix.
"""

from __future__ import annotations

import base64
import inspect
import json
import math
import os
import tempfile
import typing
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import torch
from omegaconf import DictConfig, OmegaConf

from pipeline.config.choices import ACTIVATIONS, DATASETS, LOSSES, SOURCES
from pipeline.optim.base import UnsupportedOption
from pipeline.optim.factory import IMPLS, META_KEYS, SCRATCH, optimizer_class, optimizer_factory


class ConfigError(ValueError):
    """A config value is wrong; the message says which and how to fix it."""


MAX_HIDDEN_SIZE = 65536  # one 784 x 65536 layer is 200 MB of float32 weights: far past this MLP
MAX_SEED = 2**32 - 1  # numpy's seed range, which pl.seed_everything passes the seed to
# MLflow 3's tracking stores by URI scheme (the plain file store, `file:` or a path, is refused).
DATABASE_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")  # SQLAlchemy: scheme[+driver]
SERVER_SCHEMES = ("http", "https")


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


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
    ok = _is_number(value) and math.isfinite(value)
    ok = ok and (value > low if low_open else value >= low)
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    interval = (
        f"{'(' if low_open else '['}{low}, {'inf' if high is None else high}"
        f"{')' if high_open or high is None else ']'}"
    )
    _check(cfg, key, ok, f"must be a finite number in {interval}", example)


def _positive_int(cfg: DictConfig, key: str, example: str, high: int | None = None) -> None:
    value = OmegaConf.select(cfg, key)
    ok = _is_int(value) and value > 0 and (high is None or value <= high)
    allowed = "must be an integer > 0" if high is None else f"must be an integer in [1, {high}]"
    _check(cfg, key, ok, allowed, example)


def _finite_floats(cfg: DictConfig, group: str, defaults: dict[str, object] | None = None) -> None:
    """Every float directly in `group` is finite: inf and nan are no hyperparameter values."""
    for key, value in cfg[group].items():
        if isinstance(value, float) and not math.isfinite(value):
            default = (defaults or {}).get(key)
            example = f" (e.g. {group}.{key}={default})" if _is_number(default) else ""
            raise ConfigError(
                f"{group}.{key}={value!r} is not allowed: must be a finite number{example}"
            )


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
    defaults = {k: p.default for k, p in inspect.signature(torch_cls).parameters.items()}
    _finite_floats(cfg, "optimizer", defaults)  # an added +optimizer.<key>=inf as well
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
    ok = OmegaConf.is_list(hidden) and all(_is_int(h) and 0 < h <= MAX_HIDDEN_SIZE for h in hidden)
    _check(
        cfg,
        "model.hidden_sizes",
        ok,
        f"must be a list of integers in [1, {MAX_HIDDEN_SIZE}]",
        "[200]",
    )
    _positive_int(cfg, "model.input_size", "784")  # and it must fit the data: validate_data_fit
    _positive_int(cfg, "model.num_classes", "10")

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
        _is_int(seed) and 0 <= seed <= MAX_SEED,
        f"must be an integer in [0, {MAX_SEED}] (numpy's seed range)",
        "42",
    )
    for group in ("model", "data", "trainer"):
        _finite_floats(cfg, group)

    validate_devices(cfg)
    validate_tracking(cfg)
    if lightning:
        validate_trainer_keys(cfg)
        validate_trainer_values(cfg)


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
    _check(
        cfg,
        "trainer.accelerator",
        accelerator in names,
        f"choose one of {', '.join(names)}",
        "cpu",
    )
    if accelerator in registered and accelerator not in here:
        cls = AcceleratorRegistry[accelerator]["accelerator"].__name__
        _check(
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
        (_is_int(precision) or isinstance(precision, str)) and precision in accepted
    )
    shown = dict.fromkeys(str(value) for value in accepted)  # 16 and "16" once
    _check(cfg, "trainer.precision", ok, f"choose one of {', '.join(shown)}", "32-true")


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
            (_is_int(devices) and (devices > 0 or devices == -1))
            or (
                isinstance(devices, list)
                and len(devices) > 0
                and all(_is_int(d) and d >= 0 for d in devices)
                and len(set(devices)) == len(devices)
            )
        )
        allowed = "must be an integer > 0, -1 (all GPUs), a list of GPU indices or auto"
    else:
        ok = devices == "auto" or (_is_int(devices) and devices > 0)
        allowed = f"must be an integer > 0 or auto on {accelerator}"
    _check(cfg, "trainer.devices", ok, allowed, "1")
    available, kind = (gpus, "CUDA GPUs") if on_gpu else (os.cpu_count() or 1, "CPU cores")
    if _is_int(devices) and devices > available:
        raise ConfigError(
            f"trainer.devices={devices} is more than this machine has ({available} {kind}); "
            f"use trainer.devices={available} or fewer (or trainer.devices=auto)"
        )
    if isinstance(devices, list) and max(devices) >= gpus:
        raise ConfigError(
            f"trainer.devices={devices} names a GPU this machine does not have (it has {gpus}, "
            f"indices 0 to {gpus - 1}); use trainer.devices=[0] (or trainer.devices=auto)"
        )


def validate_data_fit(cfg: DictConfig, tensors: dict[str, tuple[torch.Tensor, torch.Tensor]]):
    """The model's input and output sizes fit the loaded data (`datamodule.tensors`): checked
    once the data is loaded, before the MLflow run exists."""
    inputs = {x.shape[1] for x, _ in tensors.values()}
    labels = [y for _, y in tensors.values() if len(y)]
    low = min(int(y.min()) for y in labels)
    high = max(int(y.max()) for y in labels)
    name = cfg.data.name
    [size] = inputs
    _check(
        cfg,
        "model.input_size",
        cfg.model.input_size == size,
        f"the {name} inputs have {size} values each",
        str(size),
    )
    _check(
        cfg,
        "model.num_classes",
        low >= 0 and cfg.model.num_classes > high,
        f"the {name} labels run from {low} to {high}, so at least {high + 1} outputs are needed",
        str(high + 1),
    )


def validate_tracking(cfg: DictConfig) -> None:
    """A store MLflow 3 opens, writable (sqlite) or an MLflow server that answers (http):
    checked before any run is made."""
    uri = str(cfg.tracking.uri)
    example = "sqlite:////tmp/mlruns/mlflow.db"
    scheme = urlsplit(uri).scheme.lower() if "://" in uri else ""
    use = "use sqlite:///<absolute path>/mlflow.db or an MLflow server's http(s)://host:port"
    if scheme == "file" or (not scheme and (uri.startswith((".", "/", "~")) or "/" in uri)):
        _check(
            cfg,
            "tracking.uri",
            False,
            f"that is MLflow's plain file store, which MLflow 3 refuses; {use}",
            example,
        )
    if scheme.split("+")[0] not in (*DATABASE_SCHEMES, *SERVER_SCHEMES):
        _check(cfg, "tracking.uri", False, f"not a tracking store URI; {use}", example)
    if scheme == "sqlite":
        if not uri.startswith("sqlite:///") or uri == "sqlite:///":
            _check(cfg, "tracking.uri", False, f"no database file in it; {use}", example)
        db = Path(uri.removeprefix("sqlite:///"))
        problem = _unwritable(db.parent)
        if problem is None and db.exists() and not os.access(db, os.R_OK | os.W_OK):
            problem = f"the database {db} is read-only"
        _check(cfg, "tracking.uri", problem is None, f"{problem}", example)
    elif scheme in SERVER_SCHEMES:
        parts = urlsplit(uri)
        if parts.username is not None or parts.password is not None:
            host = parts.netloc.rpartition("@")[2]
            masked = urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))
            bare = urlunsplit(parts._replace(netloc=host))
            raise ConfigError(
                f"tracking.uri={masked!r} is not allowed: credentials in the URI would be stored "
                "with every run (its params and config); set MLFLOW_TRACKING_USERNAME and "
                "MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN) in the environment, as "
                f"MLflow reads them, and drop them from the URI (e.g. tracking.uri={bare})"
            )
        problem = _not_mlflow(uri)
        _check(cfg, "tracking.uri", problem is None, f"{problem}", example)


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


API_PROBE = "/api/2.0/mlflow/experiments/search?max_results=1"  # any MLflow tracking server


def _not_mlflow(uri: str, timeout_s: float = 5.0) -> str | None:
    """Why `uri` is no working MLflow tracking server (None if it is one).

    One request of MLflow's REST API with a short timeout (MLflow's own client retries for
    minutes first), with the credentials MLflow would send (MLFLOW_TRACKING_USERNAME and
    _PASSWORD, or _TOKEN). Its JSON answer also shows that the server's own store works.
    """
    import ssl
    import urllib.error
    import urllib.request

    url = f"{uri.rstrip('/')}{API_PROBE}"
    headers = {"Accept": "application/json"}
    user, password = (os.environ.get(f"MLFLOW_TRACKING_{k}") for k in ("USERNAME", "PASSWORD"))
    token = os.environ.get("MLFLOW_TRACKING_TOKEN")
    if user and password:
        pair = base64.b64encode(f"{user}:{password}".encode()).decode()
        headers["Authorization"] = f"Basic {pair}"
    elif token:
        headers["Authorization"] = f"Bearer {token}"
    context = None
    if uri.startswith("https://"):  # the TLS settings MLflow's client reads
        context = ssl.create_default_context(
            cafile=os.environ.get("MLFLOW_TRACKING_SERVER_CERT_PATH")
        )
        if os.environ.get("MLFLOW_TRACKING_INSECURE_TLS", "").lower() == "true":
            context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    start = "start it (make server) or point tracking.uri at a reachable server or a local store"
    try:
        request = urllib.request.Request(url, headers=headers)
        with urllib.request.urlopen(request, timeout=timeout_s, context=context) as response:
            json.load(response)
    except urllib.error.HTTPError as error:
        if error.code in (401, 403):
            return (
                f"the server refuses this client (HTTP {error.code}): set "
                "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN)"
            )
        if error.code >= 500:
            return (
                f"the MLflow server answers HTTP {error.code} on {API_PROBE}: its own store "
                "fails; see the server's log"
            )
        return (
            f"that server answers, but it is not an MLflow tracking server (HTTP {error.code} "
            f"on {API_PROBE}); {start}"
        )
    except (OSError, ValueError) as error:  # URLError, timeouts, bad ports; JSON errors too
        if isinstance(error, json.JSONDecodeError | UnicodeDecodeError):
            return (
                f"that server answers, but not with MLflow's JSON on {API_PROBE}: it is not an "
                f"MLflow tracking server; {start}"
            )
        return f"the tracking server does not answer ({getattr(error, 'reason', error)}); {start}"
    return None
