"""The stacked twin of pipeline.optim.muon.MuonAdamW: torch.optim.Muon on the hidden weight
matrices (`[K, out, in]`, param groups flagged `hidden`), torch.optim.AdamW on the rest, every
hyperparameter per member.

Newton–Schulz runs on all K matrices at once: `bmm`/`baddbmm` in bfloat16, as torch's
`_zeropower_via_newtonschulz` runs `mm`/`addmm` on one (each slice of a CPU bf16 `bmm` is the
`mm` of that slice, bit for bit; tests/test_stacked_optim.py holds it). The AdamW half is
pipeline.optim.stacked.AdamW's update with the same per-member lr and weight decay.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from pipeline.optim.stacked import AdamW
from pipeline.optim.stacked_base import Hypers

# torch.optim.Muon's quintic Newton–Schulz coefficients (its defaults; MuonAdamW keeps them).
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
# adjust_lr_fn as a number per member: None / "original", "match_rms_adamw", "spectral_unclamped"
ADJUST = {None: 0, "original": 0, "match_rms_adamw": 1, "spectral_unclamped": 2}


def adjust_ratio(code: int, rows: int, cols: int) -> float:
    """torch.optim._muon._adjust_lr's factor for a [rows, cols] matrix."""
    if code == 0:
        return math.sqrt(max(1, rows / cols))
    if code == 1:
        return 0.2 * math.sqrt(max(rows, cols))
    return math.sqrt(rows / cols)


def newton_schulz(g: Tensor, steps: int, eps: float) -> Tensor:
    """torch.optim._muon._zeropower_via_newtonschulz of each matrix of `g` [K, rows, cols]."""
    a, b, c = NS_COEFFICIENTS
    x = g.to(dtype=torch.bfloat16, copy=True)
    tall = g.size(1) > g.size(2)
    if tall:
        x = x.transpose(1, 2)
    norm = torch.linalg.vector_norm(x, dim=(1, 2), keepdim=True).clamp(min=eps)
    # x.div_(0-dim bf16 norm): CPU divides a reduced float by a scalar as x · (1 / norm), in
    # float32 (its opmath), rounded once to bf16.
    x = (x.float() * norm.float().reciprocal()).to(torch.bfloat16)
    for _ in range(steps):
        gram = torch.bmm(x, x.transpose(1, 2))
        x = torch.baddbmm(x, torch.baddbmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.transpose(1, 2) if tall else x


class MuonAdamW(AdamW):
    """Muon's momentum, Nesterov, lr adjustment per member; AdamW's betas and eps per member;
    one lr and weight decay for both halves (as MuonAdamW). ns_steps and Muon's eps are shared."""

    names = (*AdamW.names, "momentum", "nesterov", "ns_steps", "ns_eps", "adjust_lr_fn")
    shared = ("ns_steps", "ns_eps")
    wants_hidden_split = True  # param groups flagged `hidden` (StackedMLP.hidden_split)
    derived = {**AdamW.derived, "1-momentum": lambda h: 1 - h["momentum"]}

    @classmethod
    def translate(cls, values: dict[str, Any]) -> dict[str, Any]:
        values["beta1"], values["beta2"] = values.pop("adamw_betas")
        values["ns_eps"], values["eps"] = values.pop("eps"), values.pop("adamw_eps")
        values["adjust_lr_fn"] = ADJUST[values["adjust_lr_fn"]]
        values["amsgrad"] = False
        return values

    @classmethod
    def probe(cls) -> list:
        return [
            {"params": [torch.zeros(2, 2, requires_grad=True)], "hidden": True},
            {"params": [torch.zeros(1, requires_grad=True)], "hidden": False},
        ]

    def __init__(self, params: Any, hypers: Hypers) -> None:
        super().__init__(params, hypers)
        self.hidden = {id(p) for g in self.param_groups if g.get("hidden") for p in g["params"]}

    def update(self, p: Tensor, g: Tensor, state: dict[str, Any]) -> None:
        if id(p) not in self.hidden:
            return super().update(p, g, state)
        if "momentum_buffer" not in state:
            state["momentum_buffer"] = torch.zeros_like(g)
        buf = state["momentum_buffer"].lerp_(g, self.h("1-momentum", p))
        # grad.lerp(buf, momentum) if nesterov else buf
        update = self.choose(
            "nesterov", p, lambda: torch.lerp(g, buf, self.h("momentum", p)), lambda: buf
        )
        steps, eps = int(self.hypers["ns_steps"][0]), float(self.hypers["ns_eps"][0])
        update = newton_schulz(update, steps, eps)
        rows, cols = p.shape[1:3]
        ratio = [adjust_ratio(int(c), rows, cols) for c in self.hypers["adjust_lr_fn"].tolist()]
        adjusted = self.hypers["lr"] * torch.tensor(ratio, dtype=torch.float64)
        p.mul_(self.h("1-lr*wd", p))  # param.mul_(1 - lr * weight_decay)
        p.addcmul_(self.h(-adjusted, p), update.to(p.dtype))  # param.add_(u, alpha=-adj_lr)
        return None
