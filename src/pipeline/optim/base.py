"""What every from-scratch optimizer shares: refused torch-only switches, the closure.

Each from-scratch class takes exactly the constructor arguments of its torch namesake and its
`step` is the textbook update, one parameter at a time, written with the names of the formula in
its docstring (g: gradient, p: parameter, t: step count). They follow PyTorch's conventions
where textbooks differ (e.g. where eps goes), so both implementations take the same path; the tests
in tests/test_optim.py hold them to that. Arguments that only choose how torch computes the same
update (foreach, fused, capturable, differentiable) are accepted at their defaults and refused
otherwise with an `UnsupportedOption` error, so nothing silently differs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch

Params = Iterable[torch.Tensor] | Iterable[dict[str, Any]]
Closure = Callable[[], float] | None


class UnsupportedOption(ValueError):
    """A from-scratch optimizer was asked for an option it does not implement."""


class ScratchOptimizer(torch.optim.Optimizer):
    """What every from-scratch optimizer shares: refusing torch-only switches, the closure,
    and the gradient as the update rules see it."""

    def __init__(self, params: Params, defaults: dict[str, Any], **torch_only: Any) -> None:
        # foreach / fused pick torch's batched kernels, capturable allows CUDA-graph capture,
        # differentiable lets autograd through the step: none changes the maths of a plain step.
        for option, value in torch_only.items():
            if value:  # None and False are the defaults that mean "the ordinary loop"
                raise UnsupportedOption(
                    f"optimizer.{option}={value!r} is not supported by the from-scratch "
                    f"{type(self).__name__} (optimizer.impl=scratch), a plain per-parameter "
                    f"loop: drop optimizer.{option} or use optimizer.impl=torch"
                )
        super().__init__(params, defaults)

    @staticmethod
    def _check(name: str, value: float, low: float, high: float = float("inf")) -> None:
        if not low <= value <= high:
            raise ValueError(f"invalid {name}: {value} (must be in [{low}, {high}])")

    def _loss(self, closure: Closure) -> float | None:
        if closure is None:
            return None
        with torch.enable_grad():
            return closure()

    @staticmethod
    def _params(group: dict[str, Any]) -> Iterable[torch.Tensor]:
        """The parameters of `group` that have a gradient this step."""
        for p in group["params"]:
            if p.grad is None:
                continue
            if p.grad.is_sparse or p.is_complex():
                raise UnsupportedOption(
                    "from-scratch optimizers handle dense real gradients only; "
                    "use optimizer.impl=torch for sparse or complex parameters"
                )
            yield p

    @staticmethod
    def _gradient(
        p: torch.Tensor, group: dict[str, Any], couple_decay: bool = True
    ) -> torch.Tensor:
        """g = ∇f(p), or −∇f(p) when maximizing; plus λ·p when weight decay is L2-coupled."""
        g = -p.grad if group["maximize"] else p.grad
        if couple_decay and group["weight_decay"] != 0:
            g = g + group["weight_decay"] * p
        return g
