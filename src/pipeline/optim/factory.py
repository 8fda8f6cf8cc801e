"""The optimizer a config asks for: its torch class, or that class's from-scratch twin."""

from __future__ import annotations

import functools

import lion_pytorch
import torch
from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf

from pipeline.optim.adam import Adam, AdamW
from pipeline.optim.adam_variants import Adamax, NAdam, RAdam
from pipeline.optim.adaptive import Adadelta, Adagrad, RMSprop
from pipeline.optim.lion import Lion
from pipeline.optim.sgd import SGD

IMPLS = ("torch", "scratch")
# Our config keys that are not arguments of the optimizer class.
META_KEYS = ("_target_", "_partial_", "name", "impl")

SCRATCH: dict[type[torch.optim.Optimizer], type[torch.optim.Optimizer]] = {
    torch.optim.SGD: SGD,
    torch.optim.Adagrad: Adagrad,
    torch.optim.RMSprop: RMSprop,
    torch.optim.Adam: Adam,
    torch.optim.AdamW: AdamW,
    torch.optim.Adadelta: Adadelta,
    torch.optim.NAdam: NAdam,
    torch.optim.RAdam: RAdam,
    torch.optim.Adamax: Adamax,
    lion_pytorch.Lion: Lion,
}


def optimizer_class(cfg: DictConfig) -> type[torch.optim.Optimizer]:
    """The class `cfg` trains with: its `_target_`, or that class's from-scratch twin."""
    torch_cls = get_class(cfg._target_)
    if cfg.get("impl", "torch") == "scratch":
        return SCRATCH[torch_cls]
    return torch_cls


def optimizer_kwargs(cfg: DictConfig) -> dict:
    kwargs = OmegaConf.to_container(cfg, resolve=True)
    for key in META_KEYS:
        kwargs.pop(key, None)
    if "betas" in kwargs:
        kwargs["betas"] = tuple(kwargs["betas"])
    return kwargs


def optimizer_factory(cfg: DictConfig) -> functools.partial:
    """`params -> optimizer`, handed to the LightningModule's `configure_optimizers`."""
    return functools.partial(optimizer_class(cfg), **optimizer_kwargs(cfg))
