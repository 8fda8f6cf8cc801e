"""A user's own optimizer, as the pipeline sees one: any torch.optim.Optimizer subclass.

Signum (Bernstein et al. 2018, "signSGD: Compressed Optimisation for Non-Convex Problems"):
the sign of a momentum of the gradients, times the learning rate.

    m <- momentum * m + (1 - momentum) * g
    p <- p * (1 - lr * weight_decay) - lr * sign(m)
"""

from __future__ import annotations

import torch


class Signum(torch.optim.Optimizer):
    def __init__(self, params, lr: float = 1e-3, momentum: float = 0.9, weight_decay: float = 0.0):
        if lr <= 0 or not 0 <= momentum < 1 or weight_decay < 0:
            raise ValueError(f"Signum: lr={lr}, momentum={momentum}, weight_decay={weight_decay}")
        super().__init__(params, {"lr": lr, "momentum": momentum, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, beta, decay = group["lr"], group["momentum"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "m" not in state:
                    state["m"] = torch.zeros_like(p)
                m = state["m"].mul_(beta).add_(p.grad, alpha=1 - beta)
                p.mul_(1 - lr * decay).add_(m.sign(), alpha=-lr)
        return loss
