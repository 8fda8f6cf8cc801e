"""Lion from scratch: the sign of an interpolated momentum (lion-pytorch's Lion is its twin)."""

from __future__ import annotations

import torch

from pipeline.optim.base import Closure, Params, ScratchOptimizer


class Lion(ScratchOptimizer):
    r"""Lion (Chen et al. 2023): every coordinate moves by exactly lr, in the direction of the
    sign of a momentum that mixes in the new gradient; decay shrinks p first.

    p  ← p·(1 − lr·λ)                  (λ/lr₀ with decoupled_weight_decay, lr₀ the initial lr)
    p  ← p − lr·sign(β₁·m + (1 − β₁)·g)
    m  ← β₂·m + (1 − β₂)·g
    """

    def __init__(
        self,
        params: Params,
        lr: float = 1e-4,
        betas: tuple[float, float] = (0.9, 0.99),
        weight_decay: float = 0.0,
        use_triton: bool = False,
        decoupled_weight_decay: bool = False,
    ) -> None:
        self._check("lr", lr, 0)
        if not all(0 <= beta <= 1 for beta in betas):
            raise ValueError(f"invalid betas: {betas} (each must be in [0, 1])")
        self.initial_lr, self.decoupled = lr, decoupled_weight_decay
        defaults = dict(lr=lr, betas=tuple(betas), weight_decay=weight_decay, maximize=False)
        # use_triton picks lion-pytorch's fused GPU kernel for the same update.
        super().__init__(params, defaults, use_triton=use_triton)

    @torch.no_grad()
    def step(self, closure: Closure = None) -> float | None:
        loss = self._loss(closure)
        for group in self.param_groups:
            lr, (beta1, beta2) = group["lr"], group["betas"]
            decay = group["weight_decay"] / (self.initial_lr if self.decoupled else 1)
            for p in self._params(group):
                state = self.state[p]
                if not state:
                    state["m"] = torch.zeros_like(p)
                g = p.grad
                p.mul_(1 - lr * decay)
                p.sub_(lr * torch.sign(beta1 * state["m"] + (1 - beta1) * g))
                state["m"] = beta2 * state["m"] + (1 - beta2) * g
        return loss
