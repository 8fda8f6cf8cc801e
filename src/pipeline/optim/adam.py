"""Adam and AdamW from scratch."""

from __future__ import annotations

import torch

from pipeline.optim.base import Closure, Params, ScratchOptimizer


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
