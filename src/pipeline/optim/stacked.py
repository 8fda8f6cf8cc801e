"""Optimizers for a population: K models stacked along a first axis, each with its own
hyperparameters, stepped by one update.

A parameter is `[K, ...]` (member k's tensor is `p[k]`); each hyperparameter is a tensor of K
values, broadcast over the member axis; each member has its own state (running means, step
count). torch.optim cannot do this: it refuses a tensor lr of K values ("Tensor lr must be
1-element"). Each class follows the single-tensor step of its torch.optim namesake (the path
torch takes on a CPU) operation for operation, so member k steps as `torch.optim` steps model k
alone; tests/test_stacked_optim.py holds each against torch.optim, member by member.

`active` (a bool tensor of K) freezes members: a frozen member's parameters do not move (its
state may; it is never read again). A diverged member is frozen while the others go on.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor

Hypers = dict[str, Sequence[float]]


# torch's CPU kernels round as these do (a fused multiply-add where torch fuses one); written
# with per-member tensors in place of torch's scalar, each gives torch's bits (float32 too).
def add(x: Tensor, alpha: Tensor, y: Tensor) -> Tensor:
    """x.add(y, alpha=alpha)."""
    return torch.addcmul(x, alpha, y)


def addcmul(x: Tensor, a: Tensor, b: Tensor, value: Tensor) -> Tensor:
    """x.addcmul(a, b, value=value)."""
    return torch.addcmul(x, value * a, b)


def addcdiv(x: Tensor, a: Tensor, b: Tensor, value: Tensor) -> Tensor:
    """x.addcdiv(a, b, value=value)."""
    return x + value * a / b


class StackedOptimizer(torch.optim.Optimizer):
    """The member axis, the per-member hyperparameters, masked parameter updates."""

    names: tuple[str, ...] = ()  # hyperparameters, as the torch class names them ("betas" split)

    def __init__(self, params: Iterable[Tensor], hypers: Hypers, active: Tensor | None = None):
        params = list(params)
        super().__init__(params, {})
        self.size = params[0].shape[0]
        missing = set(self.names) - set(hypers)
        if missing or any(len(values) != self.size for values in hypers.values()):
            raise ValueError(f"{type(self).__name__} needs {self.size} values of {self.names}")
        # float64 on the CPU: the per-member scalars as torch computes them (Python floats).
        self.hypers = {
            k: torch.tensor([float(v) for v in hypers[k]], dtype=torch.float64) for k in self.names
        }
        self.active = torch.ones(self.size, dtype=torch.bool) if active is None else active
        self._views: dict[tuple, Tensor] = {}

    def h(self, value: Tensor | str, p: Tensor) -> Tensor:
        """A per-member value (a hyperparameter's name, or a float64 tensor of K) shaped to
        broadcast over `p` ([K, 1, ...]), in p's dtype and on its device."""
        if isinstance(value, str):
            key = (value, p.dtype, p.device, p.dim())
            if key not in self._views:
                self._views[key] = self.h(self.hypers[value], p)
            return self._views[key]
        return value.to(p.device, p.dtype).view(-1, *[1] * (p.dim() - 1))

    def set(self, p: Tensor, new: Tensor) -> None:
        """p ← new, for the active members only."""
        active = self.active.to(p.device).view(-1, *[1] * (p.dim() - 1))
        p.copy_(torch.where(active, new, p))

    def flag(self, name: str, p: Tensor) -> Tensor:
        return self.h(name, p) != 0

    def decayed(self, p: Tensor, g: Tensor) -> Tensor:
        """g + λ·p, L2 weight decay coupled into the gradient (grad.add(param, alpha=wd))."""
        return add(g, self.h("weight_decay", p), p)

    @torch.no_grad()
    def step(self, closure: Any = None) -> None:
        if closure is not None:
            raise ValueError("stacked optimizers take no closure")
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    self.update(p, p.grad, self.state[p])

    def update(self, p: Tensor, g: Tensor, state: dict[str, Any]) -> None:
        raise NotImplementedError

    def steps(self, state: dict[str, Any]) -> Tensor:
        """The step count t (the same for every member: frozen ones are never read again)."""
        state["t"] = state.get("t", 0) + 1
        return torch.full((self.size,), float(state["t"]), dtype=torch.float64)


class SGD(StackedOptimizer):
    """torch.optim.SGD: momentum, dampening, Nesterov, weight decay, each per member."""

    names = ("lr", "momentum", "dampening", "weight_decay", "nesterov")

    def update(self, p: Tensor, g: Tensor, state: dict[str, Any]) -> None:
        g = self.decayed(p, g)
        mu = self.h("momentum", p)
        if "v" not in state:
            v = state["v"] = g.clone()
        else:
            v = state["v"] = add(state["v"] * mu, self.h(1 - self.hypers["dampening"], p), g)
        # A member without momentum steps along g (torch keeps no buffer for it).
        d = torch.where(mu == 0, g, torch.where(self.flag("nesterov", p), add(g, mu, v), v))
        self.set(p, add(p, -self.h("lr", p), d))


class Adam(StackedOptimizer):
    """torch.optim.Adam (and AdamW: `decoupled`), AMSGrad per member."""

    names = ("lr", "beta1", "beta2", "eps", "weight_decay", "amsgrad")
    decoupled = False

    def update(self, p: Tensor, g: Tensor, state: dict[str, Any]) -> None:
        if not state:
            state.update(m=torch.zeros_like(p), v=torch.zeros_like(p), v_max=torch.zeros_like(p))
        t = self.steps(state)
        lr, decay = self.hypers["lr"], self.hypers["weight_decay"]
        if self.decoupled:
            self.set(p, p * self.h(1 - lr * decay, p))
        else:
            g = self.decayed(p, g)
        beta1, beta2 = self.hypers["beta1"], self.hypers["beta2"]
        m = state["m"].lerp_(g, self.h(1 - beta1, p))
        v = state["v"] = addcmul(state["v"] * self.h("beta2", p), g, g, self.h(1 - beta2, p))
        step_size = self.h(lr / (1 - beta1**t), p)
        bias2_sqrt = self.h((1 - beta2**t) ** 0.5, p)
        amsgrad = self.flag("amsgrad", p)
        v_max = state["v_max"] = torch.where(amsgrad, torch.maximum(state["v_max"], v), v)
        denom = v_max.sqrt() / bias2_sqrt + self.h("eps", p)
        self.set(p, addcdiv(p, m, denom, -step_size))


class AdamW(Adam):
    decoupled = True


class Adagrad(StackedOptimizer):
    """torch.optim.Adagrad: lr decay and the accumulator's start per member."""

    names = ("lr", "lr_decay", "weight_decay", "initial_accumulator_value", "eps")

    def update(self, p: Tensor, g: Tensor, state: dict[str, Any]) -> None:
        if not state:
            state["s"] = torch.zeros_like(p) + self.h("initial_accumulator_value", p)
        t = self.steps(state)
        g = self.decayed(p, g)
        clr = self.h(self.hypers["lr"] / (1 + (t - 1) * self.hypers["lr_decay"]), p)
        s = state["s"] = torch.addcmul(state["s"], g, g)
        self.set(p, addcdiv(p, g, s.sqrt() + self.h("eps", p), -clr))


class RMSprop(StackedOptimizer):
    """torch.optim.RMSprop: centered and momentum per member."""

    names = ("lr", "alpha", "eps", "weight_decay", "momentum", "centered")

    def update(self, p: Tensor, g: Tensor, state: dict[str, Any]) -> None:
        if not state:
            state.update(s=torch.zeros_like(p), m=torch.zeros_like(p), b=torch.zeros_like(p))
        g = self.decayed(p, g)
        alpha = self.hypers["alpha"]
        s = state["s"] = addcmul(state["s"] * self.h("alpha", p), g, g, self.h(1 - alpha, p))
        m = state["m"].lerp_(g, self.h(1 - alpha, p))
        centered = torch.where(self.flag("centered", p), torch.addcmul(s, -m, m), s)
        avg = centered.sqrt() + self.h("eps", p)
        mu, lr = self.h("momentum", p), self.h("lr", p)
        b = state["b"] = state["b"] * mu + g / avg
        self.set(p, torch.where(mu > 0, add(p, -lr, b), addcdiv(p, g, avg, -lr)))


class Adadelta(StackedOptimizer):
    """torch.optim.Adadelta: rho and eps per member."""

    names = ("lr", "rho", "eps", "weight_decay")

    def update(self, p: Tensor, g: Tensor, state: dict[str, Any]) -> None:
        if not state:
            state.update(s=torch.zeros_like(p), u=torch.zeros_like(p))
        g = self.decayed(p, g)
        rho, eps = self.hypers["rho"], self.h("eps", p)
        s = state["s"] = addcmul(state["s"] * self.h("rho", p), g, g, self.h(1 - rho, p))
        delta = (state["u"] + eps).sqrt() / (s + eps).sqrt() * g
        u = state["u"] * self.h("rho", p)
        state["u"] = addcmul(u, delta, delta, self.h(1 - rho, p))
        self.set(p, add(p, -self.h("lr", p), delta))


# torch class -> its stacked twin (AdamW before Adam: it is Adam's subclass).
STACKED: dict[type[torch.optim.Optimizer], type[StackedOptimizer]] = {
    torch.optim.SGD: SGD,
    torch.optim.AdamW: AdamW,
    torch.optim.Adam: Adam,
    torch.optim.Adagrad: Adagrad,
    torch.optim.RMSprop: RMSprop,
    torch.optim.Adadelta: Adadelta,
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
        raise ValueError(f"{cls.__name__} has no stacked (population) form")
    defaults = torch_defaults(cls)
    hypers: Hypers = {name: [] for name in stacked.names}
    for given in kwargs:
        cls([torch.zeros(1, requires_grad=True)], **given)  # torch's own checks of the values
        values = {**defaults, **given}
        if "betas" in values:
            values["beta1"], values["beta2"] = values.pop("betas")
        if stacked is AdamW or stacked is Adam:
            values.pop("decoupled_weight_decay", None)  # the class says it
        for name, value in values.items():
            if name in hypers:
                hypers[name].append(float(value))
            elif name != "self" and name != "params" and value != defaults.get(name):
                raise ValueError(f"optimizer.{name}={value!r} has no stacked (population) form")
    return stacked, hypers
