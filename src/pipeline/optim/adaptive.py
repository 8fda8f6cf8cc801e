"""Per-coordinate step sizes from scratch: Adagrad, RMSprop, Adadelta."""

from __future__ import annotations

import torch

from pipeline.optim.base import Closure, Params, ScratchOptimizer


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
