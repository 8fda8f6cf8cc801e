"""Muon on the hidden layers' weight matrices, AdamW on everything else: one optimizer object.

torch.optim.Muon orthogonalises each 2-D update (Newton-Schulz) and is meant for hidden weight
matrices only; biases and the output layer go to AdamW (Jordan et al. 2024, "Muon: an optimizer
for hidden layers in neural networks"). The model offers that split (`Classifier.param_groups`:
groups flagged `hidden`), because shape alone cannot tell the output layer from a hidden one.

`MuonAdamW` holds a torch Muon and a torch AdamW and is itself a torch Optimizer whose
param_groups are theirs (the same dicts) and whose `state` both share (their parameters are
disjoint). So Lightning's checkpoints, `load_state_dict`, lr schedulers (one lr per group) and
the device moves all see one ordinary optimizer, and each step is exactly torch's two steps.
With `adjust_lr_fn="match_rms_adamw"` (Liu et al. 2025, "Muon is Scalable for LLM Training")
Muon's update has AdamW's RMS, so one `lr` and one `weight_decay` serve both halves.
"""

from __future__ import annotations

from typing import Any

import torch

from pipeline.optim.base import Closure


class MuonAdamW(torch.optim.Optimizer):
    """Muon for param groups flagged `hidden: True`, AdamW for the rest (same lr and decay)."""

    # Classifier.configure_optimizers hands an optimizer with this flag its param groups split
    # into hidden weight matrices (`hidden: True`) and the rest, instead of a flat parameter list.
    wants_hidden_split = True

    def __init__(
        self,
        params: Any,
        lr: float = 1e-3,
        weight_decay: float = 0.1,
        momentum: float = 0.95,
        nesterov: bool = True,
        ns_steps: int = 5,
        eps: float = 1e-7,
        adjust_lr_fn: str | None = "match_rms_adamw",
        adamw_betas: tuple[float, float] = (0.9, 0.999),
        adamw_eps: float = 1e-8,
    ) -> None:
        groups = list(params)
        if not all(isinstance(g, dict) and "hidden" in g for g in groups):
            raise ValueError(
                "MuonAdamW needs the model's parameter split: groups flagged hidden=True (2-D "
                "hidden weights, for Muon) or False (biases, output layer, for AdamW)"
            )
        hidden = [p for g in groups if g["hidden"] for p in g["params"]]
        rest = [p for g in groups if not g["hidden"] for p in g["params"]]
        self._kinds: list[torch.optim.Optimizer] = []
        if hidden:
            self.muon = torch.optim.Muon(
                hidden,
                lr=lr,
                weight_decay=weight_decay,
                momentum=momentum,
                nesterov=nesterov,
                ns_steps=ns_steps,
                eps=eps,
                adjust_lr_fn=adjust_lr_fn,
            )
            self._kinds.append(self.muon)
        if rest:
            self.adamw = torch.optim.AdamW(
                rest, lr=lr, betas=tuple(adamw_betas), eps=adamw_eps, weight_decay=weight_decay
            )
            self._kinds.append(self.adamw)
        self._sizes = [len(k.param_groups) for k in self._kinds]
        # The same group dicts as the two optimizers' (add_param_group keeps the dict it gets).
        super().__init__([g for k in self._kinds for g in k.param_groups], {})
        self._link()

    def _link(self) -> None:
        """Point both optimizers at this object's groups and state (after a load_state_dict,
        which replaces both)."""
        start = 0
        for kind, size in zip(self._kinds, self._sizes, strict=True):
            kind.param_groups = self.param_groups[start : start + size]
            kind.state = self.state
            start += size

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self._link()

    def update_groups(self, keywords: dict[str, Any]) -> None:
        """Set this optimizer's config values on each group by the name that group reads."""
        shared = {k: keywords[k] for k in ("lr", "weight_decay") if k in keywords}
        muon_keys = ("momentum", "nesterov", "ns_steps", "eps", "adjust_lr_fn")
        for kind in self._kinds:
            if kind is getattr(self, "muon", None):
                values = shared | {k: keywords[k] for k in muon_keys if k in keywords}
            else:
                values = dict(shared)
                if "adamw_betas" in keywords:
                    values["betas"] = tuple(keywords["adamw_betas"])
                if "adamw_eps" in keywords:
                    values["eps"] = keywords["adamw_eps"]
            for group in kind.param_groups:
                group.update(values)

    @torch.no_grad()
    def step(self, closure: Closure = None) -> float | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for kind in self._kinds:
            kind.step()
        return loss
