"""SGD from scratch: plain, with momentum, with Nesterov momentum."""

from __future__ import annotations

import torch

from pipeline.optim.base import Closure, Params, ScratchOptimizer


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
