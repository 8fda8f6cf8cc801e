"""Stacked twins of the newer presets: NAdam, RAdam, Adamax (torch.optim) and Lion
(lion-pytorch), each per member (pipeline.optim.stacked has the six; stacked_muon, Muon;
stacked_registry, which class stands for which).

As in pipeline.optim.stacked, each update follows its reference's single-tensor step (the path
torch takes on a CPU) operation for operation and rounds as it does: x.add(y, alpha=a) is
torch.addcmul(x, a, y); x.addcdiv(a, b, value=c) is x + (c·a)/b; a Python float times a tensor
is that float in the tensor's dtype; `c / tensor` is tensor.reciprocal() * c (torch's
__rtruediv__). Scalars torch computes in Python (bias corrections, NAdam's μ, RAdam's ρ) are
float64 tensors of K here: the same IEEE operations.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from pipeline.optim.stacked_base import StackedOptimizer


def scalar_dtype() -> torch.dtype:
    """The dtype torch keeps an optimizer's scalar state in (torch.optim's _get_scalar_dtype)."""
    return torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32


class NAdam(StackedOptimizer):
    """torch.optim.NAdam: betas, eps, weight decay (coupled) and momentum decay per member."""

    names = ("lr", "beta1", "beta2", "eps", "weight_decay", "momentum_decay")
    derived = {"1-beta1": lambda h: 1 - h["beta1"], "1-beta2": lambda h: 1 - h["beta2"]}

    def update(self, p: Tensor, g: Tensor, state: dict[str, Any]) -> None:
        if "m" not in state:  # mu_product: a scalar tensor per member, as torch keeps it
            state.update(m=torch.zeros_like(p), v=torch.zeros_like(p))
            state["mu_product"] = torch.ones(self.size, dtype=scalar_dtype())
        t = self.steps(state)
        h = self.hypers
        g = self.decayed(p, g)
        bias_correction2 = 1 - h["beta2"] ** t
        mu = h["beta1"] * (1.0 - 0.5 * (0.96 ** (t * h["momentum_decay"])))
        mu_next = h["beta1"] * (1.0 - 0.5 * (0.96 ** ((t + 1) * h["momentum_decay"])))
        mu_product = state["mu_product"].mul_(mu.to(state["mu_product"].dtype)).double()
        tmp = self.buffer(state, "tmp", p)
        m = state["m"].lerp_(g, self.h("1-beta1", p))  # exp_avg.lerp_(grad, 1 - beta1)
        # exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        v = state["v"].mul_(self.h("beta2", p)).addcmul_(torch.mul(g, self.h("1-beta2", p)), g)
        # denom = exp_avg_sq.div(bias_correction2).sqrt(); denom.add_(eps)
        denom = torch.div(v, self.h(bias_correction2, p), out=self.buffer(state, "denom", p))
        denom.sqrt_().add_(self.h("eps", p))
        lr = h["lr"]
        # param.addcdiv_(grad, denom, value=-lr * (1 - mu) / (1 - mu_product))
        p.add_(torch.mul(g, self.h(-lr * (1.0 - mu) / (1.0 - mu_product), p), out=tmp).div_(denom))
        # param.addcdiv_(exp_avg, denom, value=-lr * mu_next / (1 - mu_product * mu_next))
        c = (-lr * mu_next) / (1.0 - mu_product * mu_next)
        p.add_(torch.mul(m, self.h(c, p), out=tmp).div_(denom))


class RAdam(StackedOptimizer):
    """torch.optim.RAdam: betas, eps and weight decay (coupled) per member; each member's
    rectification switches on at its own step (rho_t > 5)."""

    names = ("lr", "beta1", "beta2", "eps", "weight_decay")
    derived = {"1-beta1": lambda h: 1 - h["beta1"], "1-beta2": lambda h: 1 - h["beta2"]}

    def update(self, p: Tensor, g: Tensor, state: dict[str, Any]) -> None:
        if "m" not in state:
            state.update(m=torch.zeros_like(p), v=torch.zeros_like(p))
        t = self.steps(state)
        h = self.hypers
        g = self.decayed(p, g)
        m = state["m"].lerp_(g, self.h("1-beta1", p))
        v = state["v"].mul_(self.h("beta2", p)).addcmul_(torch.mul(g, self.h("1-beta2", p)), g)
        bias_correction1, bias_correction2 = 1 - h["beta1"] ** t, 1 - h["beta2"] ** t
        rho_inf = 2 / (1 - h["beta2"]) - 1
        rho_t = rho_inf - 2 * t * (h["beta2"] ** t) / bias_correction2
        rect = (
            (rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t)
        ) ** 0.5
        on = rho_t > 5.0
        # bias_corrected_exp_avg * lr [* (bc2 ** 0.5 / (exp_avg_sq.sqrt() + eps)) * rect]
        update = torch.div(m, self.h(bias_correction1, p)).mul_(self.h("lr", p))
        if bool(on.any()):
            adaptive = torch.sqrt(v).add_(self.h("eps", p)).reciprocal_()
            adaptive.mul_(self.h(bias_correction2**0.5, p))
            rectified = torch.mul(update, adaptive).mul_(self.h(torch.where(on, rect, 1.0), p))
            update = (
                rectified if bool(on.all()) else torch.where(self.h(on, p) != 0, rectified, update)
            )
        p.sub_(update)  # param.add_(update, alpha=-1.0)


class Adamax(StackedOptimizer):
    """torch.optim.Adamax: betas, eps and weight decay per member."""

    names = ("lr", "beta1", "beta2", "eps", "weight_decay")
    derived = {"1-beta1": lambda h: 1 - h["beta1"]}

    def update(self, p: Tensor, g: Tensor, state: dict[str, Any]) -> None:
        if "m" not in state:
            state.update(m=torch.zeros_like(p), u=torch.zeros_like(p))
        t = self.steps(state)
        g = self.decayed(p, g)
        m = state["m"].lerp_(g, self.h("1-beta1", p))  # exp_avg.lerp_(grad, 1 - beta1)
        # torch.maximum(exp_inf.mul_(beta2), grad.abs().add_(eps), out=exp_inf)
        norm = torch.abs(g, out=self.buffer(state, "norm", p)).add_(self.h("eps", p))
        u = torch.maximum(state["u"].mul_(self.h("beta2", p)), norm, out=state["u"])
        clr = self.hypers["lr"] / (1 - self.hypers["beta1"] ** t)
        # param.addcdiv_(exp_avg, exp_inf, value=-clr)
        p.add_(torch.mul(m, self.h(-clr, p), out=self.buffer(state, "tmp", p)).div_(u))


class Lion(StackedOptimizer):
    """lion_pytorch.Lion: betas and weight decay per member (decoupled_weight_decay divides a
    member's decay by its initial lr, as lion-pytorch does)."""

    names = ("lr", "beta1", "beta2", "weight_decay")
    derived = {
        "1-lr*wd": lambda h: 1.0 - h["lr"] * h["weight_decay"],
        "-lr": lambda h: -h["lr"],
        "1-beta1": lambda h: 1.0 - h["beta1"],
        "1-beta2": lambda h: 1.0 - h["beta2"],
    }

    @classmethod
    def translate(cls, values: dict[str, Any]) -> dict[str, Any]:
        if values.pop("decoupled_weight_decay"):  # wd /= init_lr
            values["weight_decay"] = values["weight_decay"] / values["lr"]
        return super().translate(values)

    def update(self, p: Tensor, g: Tensor, state: dict[str, Any]) -> None:
        if "m" not in state:
            state["m"] = torch.zeros_like(p)
        m = state["m"]
        p.mul_(self.h("1-lr*wd", p))  # p.data.mul_(1. - lr * wd)
        # exp_avg.clone().mul_(beta1).add(grad, alpha=1. - beta1).sgn_()
        update = torch.mul(m, self.h("beta1", p), out=self.buffer(state, "update", p))
        torch.addcmul(update, self.h("1-beta1", p), g, out=update).sgn_()
        p.addcmul_(self.h("-lr", p), update)  # p.add_(update, alpha=-lr)
        m.mul_(self.h("beta2", p)).addcmul_(self.h("1-beta2", p), g)
