"""NAdam, RAdam and Adamax from scratch: Adam with Nesterov momentum, with a rectified start,
with the infinity norm."""

from __future__ import annotations

import math

import torch

from pipeline.optim.base import Closure, Params, ScratchOptimizer


class _AdamLike(ScratchOptimizer):
    """The shared constructor: lr, betas, eps, weight decay, and each one's own extras."""

    def __init__(self, params: Params, lr, betas, eps, weight_decay, torch_only, **extra) -> None:
        self._check("lr", lr, 0)
        self._check("eps", eps, 0)
        self._check("weight_decay", weight_decay, 0)
        if not all(0 <= beta < 1 for beta in betas):
            raise ValueError(f"invalid betas: {betas} (each must be in [0, 1))")
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, **extra)
        super().__init__(params, defaults, **torch_only)

    def _decayed_gradient(self, p: torch.Tensor, group: dict) -> torch.Tensor:
        """AdamW-style decay shrinks p first; otherwise L2 decay enters g."""
        decoupled = group.get("decoupled_weight_decay", False)
        if decoupled:
            p.mul_(1 - group["lr"] * group["weight_decay"])
        return self._gradient(p, group, couple_decay=not decoupled)


class NAdam(_AdamLike):
    r"""NAdam (Dozat 2016): Adam whose momentum looks one step ahead, with a warming schedule μ.

    μₜ  ← β₁·(1 − ½·0.96^(t·ψ)),   Πₜ ← Πₜ₋₁·μₜ          (ψ: momentum_decay)
    m  ← β₁·m + (1 − β₁)·g,   v ← β₂·v + (1 − β₂)·g²
    d  ← √(v / (1 − β₂ᵗ)) + ε
    p  ← p − lr·(1 − μₜ)/(1 − Πₜ)·g/d − lr·μₜ₊₁/(1 − Πₜ·μₜ₊₁)·m/d
    """

    def __init__(
        self,
        params: Params,
        lr: float | torch.Tensor = 2e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0,
        momentum_decay: float = 4e-3,
        decoupled_weight_decay: bool = False,
        *,
        foreach: bool | None = None,
        maximize: bool = False,
        capturable: bool = False,
        differentiable: bool = False,
    ) -> None:
        self._check("momentum_decay", momentum_decay, 0)
        switches = dict(foreach=foreach, capturable=capturable, differentiable=differentiable)
        super().__init__(
            params,
            lr,
            betas,
            eps,
            weight_decay,
            switches,
            maximize=maximize,
            momentum_decay=momentum_decay,
            decoupled_weight_decay=decoupled_weight_decay,
        )

    @torch.no_grad()
    def step(self, closure: Closure = None) -> float | None:
        loss = self._loss(closure)
        for group in self.param_groups:
            lr, (beta1, beta2), eps = group["lr"], group["betas"], group["eps"]
            psi = group["momentum_decay"]
            for p in self._params(group):
                state = self.state[p]
                if not state:
                    state.update(t=0, mu_product=1.0, m=torch.zeros_like(p), v=torch.zeros_like(p))
                state["t"] += 1
                t = state["t"]
                g = self._decayed_gradient(p, group)
                # Π is rounded to the default dtype, as torch's 0-d tensor of it keeps Π.
                mu = beta1 * (1 - 0.5 * 0.96 ** (t * psi))
                mu_next = beta1 * (1 - 0.5 * 0.96 ** ((t + 1) * psi))
                prod = state["mu_product"] = torch.tensor(state["mu_product"]).mul_(mu).item()
                m = state["m"] = beta1 * state["m"] + (1 - beta1) * g
                v = state["v"] = beta2 * state["v"] + (1 - beta2) * g * g
                d = (v / (1 - beta2**t)).sqrt() + eps
                p.sub_(lr * (1 - mu) / (1 - prod) * g / d)
                p.sub_(lr * mu_next / (1 - prod * mu_next) * m / d)
        return loss


class RAdam(_AdamLike):
    r"""RAdam (Liu et al. 2020): momentum SGD while Adam's variance estimate is untrustworthy
    (ρₜ ≤ 5), then Adam with its step rectified by r.

    m  ← β₁·m + (1 − β₁)·g,   v ← β₂·v + (1 − β₂)·g²,   m̂ ← m / (1 − β₁ᵗ)
    ρ∞ ← 2/(1 − β₂) − 1,      ρₜ ← ρ∞ − 2t·β₂ᵗ/(1 − β₂ᵗ)
    r  ← √((ρₜ − 4)(ρₜ − 2)ρ∞ / ((ρ∞ − 4)(ρ∞ − 2)ρₜ))
    p  ← p − lr·m̂·r·√(1 − β₂ᵗ)/(√v + ε)   if ρₜ > 5,   p ← p − lr·m̂ otherwise
    """

    def __init__(
        self,
        params: Params,
        lr: float | torch.Tensor = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0,
        decoupled_weight_decay: bool = False,
        *,
        foreach: bool | None = None,
        maximize: bool = False,
        capturable: bool = False,
        differentiable: bool = False,
    ) -> None:
        switches = dict(foreach=foreach, capturable=capturable, differentiable=differentiable)
        super().__init__(
            params,
            lr,
            betas,
            eps,
            weight_decay,
            switches,
            maximize=maximize,
            decoupled_weight_decay=decoupled_weight_decay,
        )

    @torch.no_grad()
    def step(self, closure: Closure = None) -> float | None:
        loss = self._loss(closure)
        for group in self.param_groups:
            lr, (beta1, beta2), eps = group["lr"], group["betas"], group["eps"]
            rho_inf = 2 / (1 - beta2) - 1
            for p in self._params(group):
                state = self.state[p]
                if not state:
                    state.update(t=0, m=torch.zeros_like(p), v=torch.zeros_like(p))
                state["t"] += 1
                t = state["t"]
                g = self._decayed_gradient(p, group)
                m = state["m"] = beta1 * state["m"] + (1 - beta1) * g
                v = state["v"] = beta2 * state["v"] + (1 - beta2) * g * g
                m_hat = m / (1 - beta1**t)
                rho = rho_inf - 2 * t * beta2**t / (1 - beta2**t)
                if rho > 5:
                    num = (rho - 4) * (rho - 2) * rho_inf
                    r = math.sqrt(num / ((rho_inf - 4) * (rho_inf - 2) * rho))
                    p.sub_(lr * m_hat * r * math.sqrt(1 - beta2**t) / (v.sqrt() + eps))
                else:
                    p.sub_(lr * m_hat)
        return loss


class Adamax(_AdamLike):
    r"""Adamax (Kingma & Ba 2015, section 7.1): Adam with the infinity norm in place of √v.

    m  ← β₁·m + (1 − β₁)·g
    u  ← max(β₂·u, |g| + ε)
    p  ← p − lr/(1 − β₁ᵗ)·m/u
    """

    def __init__(
        self,
        params: Params,
        lr: float | torch.Tensor = 2e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0,
        foreach: bool | None = None,
        *,
        maximize: bool = False,
        differentiable: bool = False,
        capturable: bool = False,
    ) -> None:
        switches = dict(foreach=foreach, capturable=capturable, differentiable=differentiable)
        super().__init__(params, lr, betas, eps, weight_decay, switches, maximize=maximize)

    @torch.no_grad()
    def step(self, closure: Closure = None) -> float | None:
        loss = self._loss(closure)
        for group in self.param_groups:
            lr, (beta1, beta2), eps = group["lr"], group["betas"], group["eps"]
            for p in self._params(group):
                state = self.state[p]
                if not state:
                    state.update(t=0, m=torch.zeros_like(p), u=torch.zeros_like(p))
                state["t"] += 1
                g = self._gradient(p, group)
                m = state["m"] = beta1 * state["m"] + (1 - beta1) * g
                u = state["u"] = torch.maximum(beta2 * state["u"], g.abs() + eps)
                p.sub_(lr / (1 - beta1 ** state["t"]) * m / u)
        return loss
