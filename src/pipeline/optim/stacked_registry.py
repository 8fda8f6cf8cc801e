"""Which stacked optimizer trains a population for a config's optimizer class, and each
member's hyperparameters (pipeline.optim.stacked*, the optimizers)."""

from __future__ import annotations

import inspect
from typing import Any

import lion_pytorch
import torch

from pipeline.optim import stacked, stacked_modern, stacked_muon
from pipeline.optim.muon import MuonAdamW as TorchMuonAdamW
from pipeline.optim.stacked_base import Hypers, StackedOptimizer

# torch class -> its stacked twin (AdamW before Adam: it is Adam's subclass).
STACKED: dict[type[torch.optim.Optimizer], type[StackedOptimizer]] = {
    torch.optim.SGD: stacked.SGD,
    torch.optim.AdamW: stacked.AdamW,
    torch.optim.Adam: stacked.Adam,
    torch.optim.Adagrad: stacked.Adagrad,
    torch.optim.RMSprop: stacked.RMSprop,
    torch.optim.Adadelta: stacked.Adadelta,
    torch.optim.NAdam: stacked_modern.NAdam,
    torch.optim.RAdam: stacked_modern.RAdam,
    torch.optim.Adamax: stacked_modern.Adamax,
    lion_pytorch.Lion: stacked_modern.Lion,
    TorchMuonAdamW: stacked_muon.MuonAdamW,
}

# Optimizers that run one per job, and why (by class name: a torch class is not imported here).
WHY_NOT = {
    "AdamWScheduleFree": "its averaged iterate and train()/eval() switch are not stacked yet",
    "Prodigy": "its step size d is estimated over a whole model, not yet per member",
}


def torch_defaults(cls: type[torch.optim.Optimizer]) -> dict[str, Any]:
    signature = inspect.signature(cls.__init__)
    return {
        name: arg.default
        for name, arg in signature.parameters.items()
        if arg.default is not inspect.Parameter.empty
    }


def member_hypers(
    cls: type[torch.optim.Optimizer], kwargs: list[dict[str, Any]]
) -> tuple[type[StackedOptimizer], Hypers]:
    """The stacked class of torch class `cls` and each member's hyperparameters from its
    constructor arguments `kwargs` (one dict per member, torch's defaults filling the gaps).

    Raises ValueError naming what has no stacked form: a class, or an option that is not at its
    default (maximize, foreach, ...); and torch's own ValueError for an invalid value."""
    stacked = STACKED.get(cls)
    if stacked is None:
        why = WHY_NOT.get(cls.__name__)
        raise ValueError(
            f"{cls.__name__} has no stacked (population) form{': ' if why else ''}{why or ''}"
        )
    defaults = torch_defaults(cls)
    hypers: Hypers = {name: [] for name in stacked.names}
    for given in kwargs:
        try:  # the class's own checks of the values (lion-pytorch asserts)
            cls(stacked.probe(), **given)
        except AssertionError as error:
            raise ValueError(f"{cls.__name__}{given}: invalid arguments {error}") from None
        values = stacked.translate({**defaults, **given})
        for name, value in values.items():
            if name in hypers:
                hypers[name].append(float(value))
            elif name != "self" and name != "params" and value != defaults.get(name):
                raise ValueError(f"optimizer.{name}={value!r} has no stacked (population) form")
    for name in stacked.shared:
        if len(set(hypers[name])) > 1:
            raise ValueError(f"optimizer.{name} must be the same for every member of a population")
    return stacked, hypers
