"""Optimizers for a population: K models stacked along a first axis, each with its own
hyperparameters, stepped by one update.

A parameter is `[K, ...]` (member k's tensor is `p[k]`); each hyperparameter is a tensor of K
values, broadcast over the member axis; each member has its own state (running means, step
count). torch.optim cannot do this: it refuses a tensor lr of K values ("Tensor lr must be
1-element"). Each class follows the single-tensor step of its torch.optim namesake (the path
torch takes on a CPU) operation for operation, so member k steps as `torch.optim` steps model k
alone; tests/test_stacked_optim.py holds each against torch.optim, member by member.

`freeze(k)` masks member k out of the update: its parameters do not move (its state may; it is
never read again). A diverged member is frozen while the others go on.

Speed: each step is a few in-place passes over the stacked tensors, temporaries in reused
buffers; a switch that differs between members (nesterov, amsgrad, centered, momentum on or off)
costs a `torch.where` only where the population mixes both settings.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from pipeline.optim.stacked_base import StackedOptimizer


# Each update below names the torch.optim operation it stands for, written so that it rounds as
# torch's CPU kernel does: x.add(y, alpha=a) is one fused multiply-add, torch.addcmul(x, a, y);
# x.addcmul(a, b, value=c) is torch.addcmul(x, c·a, b); x.addcdiv(a, b, value=c) is x + (c·a)/b.
class SGD(StackedOptimizer):
    """torch.optim.SGD: momentum, dampening, Nesterov, weight decay, each per member."""

    names = ("lr", "momentum", "dampening", "weight_decay", "nesterov")
    derived = {"-lr": lambda h: -h["lr"], "1-dampening": lambda h: 1 - h["dampening"]}

    def update(self, p: Tensor, g: Tensor, state: dict[str, Any]) -> None:
        g = self.decayed(p, g)
        d = g
        if self.every["momentum"] is not False:
            mu = self.h("momentum", p)
            if "v" not in state:
                v = state["v"] = g.clone()  # torch.clone(grad)
            else:  # buf.mul_(momentum).add_(grad, alpha=1 - dampening)
                v = state["v"].mul_(mu).addcmul_(self.h("1-dampening", p), g)
            # grad.add(buf, alpha=momentum) if nesterov, else buf
            d = self.choose("nesterov", p, lambda: torch.addcmul(g, mu, v), lambda: v)
            d = self.choose("momentum", p, lambda: d, lambda: g)  # no buffer without momentum
        p.addcmul_(self.h("-lr", p), d)  # param.add_(grad, alpha=-lr)


class Adam(StackedOptimizer):
    """torch.optim.Adam (and AdamW: `decoupled`), AMSGrad per member."""

    names = ("lr", "beta1", "beta2", "eps", "weight_decay", "amsgrad")
    derived = {
        "1-lr*wd": lambda h: 1 - h["lr"] * h["weight_decay"],
        "1-beta1": lambda h: 1 - h["beta1"],
        "1-beta2": lambda h: 1 - h["beta2"],
    }
    decoupled = False

    def update(self, p: Tensor, g: Tensor, state: dict[str, Any]) -> None:
        if "m" not in state:
            state.update(m=torch.zeros_like(p), v=torch.zeros_like(p), v_max=torch.zeros_like(p))
        t = self.steps(state)
        lr = self.hypers["lr"]
        if not self.decoupled:
            g = self.decayed(p, g)
        elif self.every["weight_decay"] is not False:
            p.mul_(self.h("1-lr*wd", p))  # param.mul_(1 - lr * weight_decay)
        beta1, beta2 = self.hypers["beta1"], self.hypers["beta2"]
        tmp = self.buffer(state, "tmp", p)
        m = state["m"].lerp_(g, self.h("1-beta1", p))  # exp_avg.lerp_(grad, 1 - beta1)
        # exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        v = (
            state["v"]
            .mul_(self.h("beta2", p))
            .addcmul_(torch.mul(g, self.h("1-beta2", p), out=tmp), g)
        )
        v_max = state["v_max"]
        v_hat = self.choose("amsgrad", p, lambda: torch.maximum(v_max, v, out=v_max), lambda: v)
        if self.every["amsgrad"] is None:
            v_max.copy_(v_hat)
        # denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(eps)
        denom = torch.sqrt(v_hat, out=self.buffer(state, "denom", p))
        denom.div_(self.h((1 - beta2**t) ** 0.5, p)).add_(self.h("eps", p))
        # param.addcdiv_(exp_avg, denom, value=-lr / bias_correction1)
        p.add_(torch.mul(m, self.h(-lr / (1 - beta1**t), p), out=tmp).div_(denom))


class AdamW(Adam):
    decoupled = True

    @classmethod
    def translate(cls, values: dict[str, Any]) -> dict[str, Any]:
        values.pop("decoupled_weight_decay", None)  # the class says it
        return super().translate(values)


class Adagrad(StackedOptimizer):
    """torch.optim.Adagrad: lr decay and the accumulator's start per member."""

    names = ("lr", "lr_decay", "weight_decay", "initial_accumulator_value", "eps")

    def update(self, p: Tensor, g: Tensor, state: dict[str, Any]) -> None:
        if "s" not in state:
            state["s"] = torch.zeros_like(p) + self.h("initial_accumulator_value", p)
        t = self.steps(state)
        g = self.decayed(p, g)
        clr = self.hypers["lr"] / (1 + (t - 1) * self.hypers["lr_decay"])
        s = state["s"].addcmul_(g, g)  # state_sum.addcmul_(grad, grad, value=1)
        std = torch.sqrt(s, out=self.buffer(state, "std", p)).add_(self.h("eps", p))
        tmp = self.buffer(state, "tmp", p)  # param.addcdiv_(grad, std, value=-clr)
        p.add_(torch.mul(g, self.h(-clr, p), out=tmp).div_(std))


class RMSprop(StackedOptimizer):
    """torch.optim.RMSprop: centered and momentum per member."""

    names = ("lr", "alpha", "eps", "weight_decay", "momentum", "centered")
    derived = {"-lr": lambda h: -h["lr"], "1-alpha": lambda h: 1 - h["alpha"]}

    def update(self, p: Tensor, g: Tensor, state: dict[str, Any]) -> None:
        if "s" not in state:
            state.update(s=torch.zeros_like(p), m=torch.zeros_like(p), b=torch.zeros_like(p))
        g = self.decayed(p, g)
        c, tmp = self.h("1-alpha", p), self.buffer(state, "tmp", p)
        # square_avg.mul_(alpha).addcmul_(grad, grad, value=1 - alpha)
        s = state["s"].mul_(self.h("alpha", p)).addcmul_(torch.mul(g, c, out=tmp), g)
        avg = self.buffer(state, "avg", p)

        def centered() -> Tensor:  # grad_avg.lerp_(grad, 1 - alpha); square_avg.addcmul(
            m = state["m"].lerp_(g, c)  # grad_avg, grad_avg, value=-1).sqrt_()
            out = self.buffer(state, "avg_centered", p)
            return torch.addcmul(s, torch.neg(m, out=tmp), m, out=out).sqrt_()

        avg = self.choose("centered", p, centered, lambda: torch.sqrt(s, out=avg))
        avg.add_(self.h("eps", p))
        lr = self.h("-lr", p)

        def momentum() -> Tensor:  # buf.mul_(momentum).addcdiv_(grad, avg)
            b = state["b"].mul_(self.h("momentum", p)).add_(torch.div(g, avg, out=tmp))
            return torch.addcmul(p, lr, b)  # param.add_(buf, alpha=-lr)

        def plain() -> Tensor:  # param.addcdiv_(grad, avg, value=-lr)
            return p + torch.mul(g, lr, out=tmp).div_(avg)

        p.copy_(self.choose("momentum", p, momentum, plain))


class Adadelta(StackedOptimizer):
    """torch.optim.Adadelta: rho and eps per member."""

    names = ("lr", "rho", "eps", "weight_decay")
    derived = {"-lr": lambda h: -h["lr"], "1-rho": lambda h: 1 - h["rho"]}

    def update(self, p: Tensor, g: Tensor, state: dict[str, Any]) -> None:
        if "s" not in state:
            state.update(s=torch.zeros_like(p), u=torch.zeros_like(p))
        g = self.decayed(p, g)
        rho, eps, c = self.h("rho", p), self.h("eps", p), self.h("1-rho", p)
        tmp = self.buffer(state, "tmp", p)
        # square_avg.mul_(rho).addcmul_(grad, grad, value=1 - rho)
        s = state["s"].mul_(rho).addcmul_(torch.mul(g, c, out=tmp), g)
        std = torch.add(s, eps, out=self.buffer(state, "std", p)).sqrt_()
        # delta = acc_delta.add(eps).sqrt_().div_(std).mul_(grad)
        delta = torch.add(state["u"], eps, out=self.buffer(state, "delta", p))
        delta.sqrt_().div_(std).mul_(g)
        # acc_delta.mul_(rho).addcmul_(delta, delta, value=1 - rho)
        state["u"].mul_(rho).addcmul_(torch.mul(delta, c, out=tmp), delta)
        p.addcmul_(self.h("-lr", p), delta)  # param.add_(delta, alpha=-lr)
