"""Optimizers: the torch ones from the config, or readable from-scratch twins (`impl: scratch`).

Each from-scratch class takes exactly the constructor arguments of its torch namesake and its
`step` is the textbook update, one parameter at a time, written with the names of the formula in
its docstring (g: gradient, p: parameter, t: step count). They follow PyTorch's conventions
where textbooks differ (e.g. where eps goes), so both implementations take the same path; the tests
in tests/test_optim.py hold them to that. Arguments that only choose how torch computes the same
update (foreach, fused, capturable, differentiable) are accepted at their defaults and refused
otherwise with an `UnsupportedOption` error, so nothing silently differs.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from typing import Any

import torch
from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf

IMPLS = ("torch", "scratch")
# Our config keys that are not arguments of the optimizer class.
META_KEYS = ("_target_", "_partial_", "name", "impl")

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


class SGD(ScratchOptimizer):
    r"""Stochastic gradient descent with momentum, dampening, Nesterov and weight decay.

    g  ← ∇f(p) + λ·p
    v  ← g                        at t = 1   (momentum μ > 0)
    v  ← μ·v + (1 − τ)·g          at t > 1   (τ: dampening)
    d  ← g + μ·v   if Nesterov,   v   if μ > 0,   g   otherwise
    p  ← p − lr·d
    """

    def __init__(
        self,
        params: Params,
        lr: float = 1e-3,
        momentum: float = 0,
        dampening: float = 0,
        weight_decay: float = 0,
        nesterov: bool = False,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        differentiable: bool = False,
        fused: bool | None = None,
    ) -> None:
        self._check("lr", lr, 0)
        self._check("momentum", momentum, 0)
        self._check("weight_decay", weight_decay, 0)
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")
        defaults = dict(
            lr=lr,
            momentum=momentum,
            dampening=dampening,
            weight_decay=weight_decay,
            nesterov=nesterov,
            maximize=maximize,
        )
        super().__init__(
            params, defaults, foreach=foreach, differentiable=differentiable, fused=fused
        )

    @torch.no_grad()
    def step(self, closure: Closure = None) -> float | None:
        loss = self._loss(closure)
        for group in self.param_groups:
            lr, mu, tau = group["lr"], group["momentum"], group["dampening"]
            for p in self._params(group):
                g = self._gradient(p, group)
                d = g
                if mu != 0:
                    state = self.state[p]
                    if "v" not in state:
                        v = g.clone()
                    else:
                        v = mu * state["v"] + (1 - tau) * g
                    state["v"] = v
                    d = g + mu * v if group["nesterov"] else v
                p.sub_(lr * d)
        return loss


class Adagrad(ScratchOptimizer):
    r"""Adagrad: each coordinate's step shrinks with the sum of its squared gradients.

    g  ← ∇f(p) + λ·p
    η  ← lr / (1 + (t − 1)·lr_decay)
    s  ← s + g²                   (s starts at initial_accumulator_value)
    p  ← p − η·g / (√s + ε)
    """

    def __init__(
        self,
        params: Params,
        lr: float = 1e-2,
        lr_decay: float = 0,
        weight_decay: float = 0,
        initial_accumulator_value: float = 0,
        eps: float = 1e-10,
        foreach: bool | None = None,
        *,
        maximize: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
    ) -> None:
        self._check("lr", lr, 0)
        self._check("lr_decay", lr_decay, 0)
        self._check("weight_decay", weight_decay, 0)
        self._check("initial_accumulator_value", initial_accumulator_value, 0)
        self._check("eps", eps, 0)
        defaults = dict(
            lr=lr,
            lr_decay=lr_decay,
            weight_decay=weight_decay,
            initial_accumulator_value=initial_accumulator_value,
            eps=eps,
            maximize=maximize,
        )
        super().__init__(
            params, defaults, foreach=foreach, differentiable=differentiable, fused=fused
        )

    @torch.no_grad()
    def step(self, closure: Closure = None) -> float | None:
        loss = self._loss(closure)
        for group in self.param_groups:
            eps = group["eps"]
            for p in self._params(group):
                state = self.state[p]
                if not state:
                    state["t"] = 0
                    state["s"] = torch.full_like(p, group["initial_accumulator_value"])
                state["t"] += 1
                t = state["t"]
                g = self._gradient(p, group)
                eta = group["lr"] / (1 + (t - 1) * group["lr_decay"])
                s = state["s"] = state["s"] + g * g
                p.sub_(eta * g / (s.sqrt() + eps))
        return loss


class RMSprop(ScratchOptimizer):
    r"""RMSprop: divide the step by a running root-mean-square of the gradient.

    g  ← ∇f(p) + λ·p
    s  ← α·s + (1 − α)·g²
    m  ← α·m + (1 − α)·g                              (centered only)
    r  ← √(s − m²) + ε  if centered,  √s + ε  otherwise
    b  ← μ·b + g / r,   p ← p − lr·b                  if momentum μ > 0
    p  ← p − lr·g / r                                  otherwise
    """

    def __init__(
        self,
        params: Params,
        lr: float = 1e-2,
        alpha: float = 0.99,
        eps: float = 1e-8,
        weight_decay: float = 0,
        momentum: float = 0,
        centered: bool = False,
        capturable: bool = False,
        foreach: bool | None = None,
        maximize: bool = False,
        differentiable: bool = False,
    ) -> None:
        self._check("lr", lr, 0)
        self._check("alpha", alpha, 0)
        self._check("eps", eps, 0)
        self._check("weight_decay", weight_decay, 0)
        self._check("momentum", momentum, 0)
        defaults = dict(
            lr=lr,
            alpha=alpha,
            eps=eps,
            weight_decay=weight_decay,
            momentum=momentum,
            centered=centered,
            maximize=maximize,
        )
        super().__init__(
            params,
            defaults,
            capturable=capturable,
            foreach=foreach,
            differentiable=differentiable,
        )

    @torch.no_grad()
    def step(self, closure: Closure = None) -> float | None:
        loss = self._loss(closure)
        for group in self.param_groups:
            lr, alpha, eps, mu = group["lr"], group["alpha"], group["eps"], group["momentum"]
            for p in self._params(group):
                state = self.state[p]
                if not state:
                    state["s"] = torch.zeros_like(p)
                    state["m"] = torch.zeros_like(p)
                    state["b"] = torch.zeros_like(p)
                g = self._gradient(p, group)
                s = state["s"] = alpha * state["s"] + (1 - alpha) * g * g
                if group["centered"]:
                    m = state["m"] = alpha * state["m"] + (1 - alpha) * g
                    r = (s - m * m).sqrt() + eps
                else:
                    r = s.sqrt() + eps
                if mu > 0:
                    b = state["b"] = mu * state["b"] + g / r
                    p.sub_(lr * b)
                else:
                    p.sub_(lr * g / r)
        return loss


class Adam(ScratchOptimizer):
    r"""Adam: steps along bias-corrected running means of g and g²; AMSGrad; AdamW's decay.

    p  ← p·(1 − lr·λ)              decoupled weight decay (AdamW), or else
    g  ← ∇f(p) + λ·p               L2 weight decay coupled into the gradient
    m  ← β₁·m + (1 − β₁)·g
    v  ← β₂·v + (1 − β₂)·g²
    v  ← max(v_max, v)             (AMSGrad only: v_max keeps the largest v seen)
    m̂  ← m / (1 − β₁ᵗ),   v̂ ← v / (1 − β₂ᵗ)
    p  ← p − lr·m̂ / (√v̂ + ε)
    """

    def __init__(
        self,
        params: Params,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0,
        amsgrad: bool = False,
        *,
        foreach: bool | None = None,
        maximize: bool = False,
        capturable: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
        decoupled_weight_decay: bool = False,
    ) -> None:
        self._check("lr", lr, 0)
        self._check("eps", eps, 0)
        self._check("weight_decay", weight_decay, 0)
        if not all(0 <= beta < 1 for beta in betas):
            raise ValueError(f"invalid betas: {betas} (each must be in [0, 1))")
        defaults = dict(
            lr=lr,
            betas=tuple(betas),
            eps=eps,
            weight_decay=weight_decay,
            amsgrad=amsgrad,
            maximize=maximize,
            decoupled_weight_decay=decoupled_weight_decay,
        )
        super().__init__(
            params,
            defaults,
            foreach=foreach,
            capturable=capturable,
            differentiable=differentiable,
            fused=fused,
        )

    @torch.no_grad()
    def step(self, closure: Closure = None) -> float | None:
        loss = self._loss(closure)
        for group in self.param_groups:
            lr, (beta1, beta2), eps = group["lr"], group["betas"], group["eps"]
            decay, decoupled = group["weight_decay"], group["decoupled_weight_decay"]
            for p in self._params(group):
                state = self.state[p]
                if not state:
                    state["t"] = 0
                    state["m"] = torch.zeros_like(p)
                    state["v"] = torch.zeros_like(p)
                    state["v_max"] = torch.zeros_like(p)
                state["t"] += 1
                t = state["t"]
                if decoupled:
                    p.mul_(1 - lr * decay)
                g = self._gradient(p, group, couple_decay=not decoupled)
                m = state["m"] = beta1 * state["m"] + (1 - beta1) * g
                v = state["v"] = beta2 * state["v"] + (1 - beta2) * g * g
                if group["amsgrad"]:
                    v = state["v_max"] = torch.maximum(state["v_max"], v)
                m_hat = m / (1 - beta1**t)
                v_hat = v / (1 - beta2**t)
                p.sub_(lr * m_hat / (v_hat.sqrt() + eps))
        return loss


class AdamW(Adam):
    r"""AdamW: Adam whose weight decay shrinks p directly instead of entering the gradient.

    p  ← p·(1 − lr·λ),   then the Adam step with g = ∇f(p)
    """

    def __init__(
        self,
        params: Params,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        amsgrad: bool = False,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        capturable: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
    ) -> None:
        super().__init__(
            params,
            lr,
            betas,
            eps,
            weight_decay,
            amsgrad,
            foreach=foreach,
            maximize=maximize,
            capturable=capturable,
            differentiable=differentiable,
            fused=fused,
            decoupled_weight_decay=True,
        )


class Adadelta(ScratchOptimizer):
    r"""Adadelta: the step's scale is the ratio of running RMS of past updates and of gradients.

    g  ← ∇f(p) + λ·p
    s  ← ρ·s + (1 − ρ)·g²
    Δ  ← √(u + ε) / √(s + ε) · g
    u  ← ρ·u + (1 − ρ)·Δ²
    p  ← p − lr·Δ
    """

    def __init__(
        self,
        params: Params,
        lr: float = 1.0,
        rho: float = 0.9,
        eps: float = 1e-6,
        weight_decay: float = 0,
        foreach: bool | None = None,
        *,
        capturable: bool = False,
        maximize: bool = False,
        differentiable: bool = False,
    ) -> None:
        self._check("lr", lr, 0)
        self._check("rho", rho, 0, 1)
        self._check("eps", eps, 0)
        self._check("weight_decay", weight_decay, 0)
        defaults = dict(lr=lr, rho=rho, eps=eps, weight_decay=weight_decay, maximize=maximize)
        super().__init__(
            params,
            defaults,
            foreach=foreach,
            capturable=capturable,
            differentiable=differentiable,
        )

    @torch.no_grad()
    def step(self, closure: Closure = None) -> float | None:
        loss = self._loss(closure)
        for group in self.param_groups:
            lr, rho, eps = group["lr"], group["rho"], group["eps"]
            for p in self._params(group):
                state = self.state[p]
                if not state:
                    state["s"] = torch.zeros_like(p)
                    state["u"] = torch.zeros_like(p)
                g = self._gradient(p, group)
                s = state["s"] = rho * state["s"] + (1 - rho) * g * g
                delta = (state["u"] + eps).sqrt() / (s + eps).sqrt() * g
                state["u"] = rho * state["u"] + (1 - rho) * delta * delta
                p.sub_(lr * delta)
        return loss


# torch class -> from-scratch class with the same constructor arguments.
SCRATCH: dict[type[torch.optim.Optimizer], type[torch.optim.Optimizer]] = {
    torch.optim.SGD: SGD,
    torch.optim.Adagrad: Adagrad,
    torch.optim.RMSprop: RMSprop,
    torch.optim.Adam: Adam,
    torch.optim.AdamW: AdamW,
    torch.optim.Adadelta: Adadelta,
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
