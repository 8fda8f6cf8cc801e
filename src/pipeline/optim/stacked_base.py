"""What every stacked optimizer shares: the member axis, per-member hyperparameters, frozen
members, a shared lr schedule (pipeline.optim.stacked has the optimizers).

A schedule is torch's own LambdaLR over the stacked optimizer: each param group's `lr` is the
schedule's factor f(s) (1.0 without a schedule), and member k steps with lr_k · f(s), the float
a single run's LambdaLR gives its group (base_lr · f(s), in float64)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import Tensor

Hypers = dict[str, Sequence[float]]


class StackedOptimizer(torch.optim.Optimizer):
    """The member axis, the per-member hyperparameters, frozen members."""

    names: tuple[str, ...] = ()  # hyperparameters, as the torch class names them ("betas" split)
    # Per-member constants computed once (float64, as torch computes them from Python floats).
    derived: dict[str, Callable[[dict[str, Tensor]], Tensor]] = {}

    # Hyperparameters that every member must share (they shape the computation).
    shared: tuple[str, ...] = ()

    @classmethod
    def translate(cls, values: dict[str, Any]) -> dict[str, Any]:
        """A member's constructor arguments (torch's defaults filled in) by the names of
        `names`: "betas" split into beta1 and beta2."""
        if "betas" in values:
            values["beta1"], values["beta2"] = values.pop("betas")
        return values

    @classmethod
    def probe(cls) -> list:
        """Parameters on which the torch class checks one member's arguments."""
        return [torch.zeros(1, requires_grad=True)]

    def __init__(self, params: Iterable[Tensor] | Iterable[dict], hypers: Hypers) -> None:
        params = list(params)
        super().__init__(params, {"lr": 1.0})  # the schedule's factor (LambdaLR sets it)
        self.size = self.param_groups[0]["params"][0].shape[0]
        missing = set(self.names) - set(hypers)
        if missing or any(len(values) != self.size for values in hypers.values()):
            raise ValueError(f"{type(self).__name__} needs {self.size} values of {self.names}")
        # float64 on the CPU: the per-member scalars as torch computes them (Python floats).
        self.given = {
            k: torch.tensor([float(v) for v in hypers[k]], dtype=torch.float64) for k in self.names
        }
        self.factor = 1.0
        self.hypers: dict[str, Tensor] = {}
        self._views: dict[tuple, Tensor] = {}
        self.scale(1.0)
        # name -> True (every member's value is nonzero), False (none), None (mixed)
        self.every = {
            k: bool(v.all()) if bool(v.all()) or not bool(v.any()) else None
            for k, v in self.hypers.items()
        }
        self.frozen: list[int] = []

    def scale(self, factor: float) -> None:
        """Every member's lr times the schedule's `factor`, and what derives from it."""
        self.factor = factor
        self.hypers = {**self.given, "lr": self.given["lr"] * factor}
        self.hypers.update({k: f(self.hypers) for k, f in self.derived.items()})
        self._views.clear()

    def freeze(self, k: int) -> None:
        if k not in self.frozen:
            self.frozen.append(k)

    def h(self, value: Tensor | str, p: Tensor) -> Tensor:
        """A per-member value (a hyperparameter's name, or a float64 tensor of K) shaped to
        broadcast over `p` ([K, 1, ...]), in p's dtype and on its device."""
        if isinstance(value, str):
            key = (value, p.dtype, p.device, p.dim())
            if key not in self._views:
                self._views[key] = self.h(self.hypers[value], p)
            return self._views[key]
        return value.to(p.device, p.dtype).view(-1, *[1] * (p.dim() - 1))

    def choose(self, name: str, p: Tensor, yes: Callable[[], Tensor], no: Callable[[], Tensor]):
        """`yes()` for members whose `name` is nonzero, `no()` for the others."""
        every = self.every[name]
        if every is not None:
            return yes() if every else no()
        return torch.where(self.h(name, p) != 0, yes(), no())

    def decayed(self, p: Tensor, g: Tensor) -> Tensor:
        """g + λ·p, L2 weight decay coupled into the gradient (grad.add(param, alpha=wd))."""
        if self.every["weight_decay"] is False:
            return g  # torch skips it too
        return torch.addcmul(g, self.h("weight_decay", p), p)

    def buffer(self, state: dict[str, Any], name: str, p: Tensor) -> Tensor:
        """A reused temporary of p's shape."""
        if name not in state:
            state[name] = torch.empty_like(p)
        return state[name]

    @torch.no_grad()
    def step(self, closure: Any = None) -> None:
        if closure is not None:
            raise ValueError("stacked optimizers take no closure")
        if self.param_groups[0]["lr"] != self.factor:  # a schedule moved it
            self.scale(self.param_groups[0]["lr"])
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                kept = p[self.frozen].clone() if self.frozen else None
                self.update(p, p.grad, self.state[p])
                if kept is not None:
                    p[self.frozen] = kept

    def update(self, p: Tensor, g: Tensor, state: dict[str, Any]) -> None:
        raise NotImplementedError

    def steps(self, state: dict[str, Any]) -> Tensor:
        """The step count t (the same for every member: frozen ones are never read again)."""
        state["t"] = state.get("t", 0) + 1
        return torch.full((self.size,), float(state["t"]), dtype=torch.float64)
