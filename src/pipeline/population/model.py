"""The MLP of K members as stacked weights: one `baddbmm` per layer for all of them.

Layer l's weight is `[K, out, in]` (member k's is `nn.Linear.weight` of its own MLP) and its bias
`[K, out]`; `x` is `[K, B, in]` (each member its own minibatch) or `[B, in]` (shared, e.g. the
validation set). Members never mix: the sum of their losses has, for each member, its own
gradient.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.config.choices import ACTIVATIONS
from pipeline.model.mlp import MLP


class StackedLinear(torch.autograd.Function):
    """`x @ w[k].T + b[k]` per member, with nn.Linear's gradients, bit for bit.

    bmm's own backward gives w's gradient transposed (`[K, in, out]` strides), which autograd
    then copies into w's layout every step: a quarter of a step at K = 8. This backward computes
    it in w's layout, as nn.Linear's does (`grad.t() @ input`). Autocast, if on, holds in
    backward as in forward (bf16-mixed)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        device = x.device.type
        ctx.autocast = (torch.is_autocast_enabled(device), torch.get_autocast_dtype(device))
        ctx.save_for_backward(x, w)
        return torch.baddbmm(b.unsqueeze(1), x, w.transpose(1, 2))

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, w = ctx.saved_tensors
        enabled, dtype = ctx.autocast
        with torch.autocast(grad.device.type, dtype=dtype, enabled=enabled):
            grad_x = torch.bmm(grad, w) if ctx.needs_input_grad[0] else None
            grad_w = torch.bmm(grad.transpose(1, 2), x)
        return grad_x, grad_w, grad.sum(dim=1)


class StackedMLP(nn.Module):
    def __init__(self, nets: list[MLP]) -> None:
        super().__init__()
        layers = [[m for m in net if isinstance(m, nn.Linear)] for net in nets]
        self.weights = nn.ParameterList(
            nn.Parameter(torch.stack([member[i].weight.detach() for member in layers]))
            for i in range(len(layers[0]))
        )
        self.biases = nn.ParameterList(
            nn.Parameter(torch.stack([member[i].bias.detach() for member in layers]))
            for i in range(len(layers[0]))
        )
        self.init_args = dict(nets[0].init_args)
        self.activation = ACTIVATIONS[self.init_args["activation"]]()

    @property
    def size(self) -> int:
        return self.weights[0].shape[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits `[K, B, classes]`."""
        if x.dim() == 2:  # shared inputs: the same minibatch for every member
            x = x.expand(self.size, *x.shape)
        last = len(self.weights) - 1
        for i, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            x = StackedLinear.apply(x, w, b)
            if i < last:
                x = self.activation(x)
        return x

    def hidden_split(self) -> list[dict]:
        """Classifier.hidden_split, stacked: the hidden layers' weights apart from the rest."""
        hidden = list(self.weights)[:-1]
        rest = [p for p in self.parameters() if all(p is not h for h in hidden)]
        return [{"params": hidden, "hidden": True}, {"params": rest, "hidden": False}]

    def member(self, k: int) -> MLP:
        """Member k as the single run's MLP (for its logged model and its checkpoint)."""
        net = MLP(**self.init_args).to(self.weights[0].device, self.weights[0].dtype)
        linears = [m for m in net if isinstance(m, nn.Linear)]
        with torch.no_grad():
            for linear, w, b in zip(linears, self.weights, self.biases, strict=True):
                linear.weight.copy_(w[k])
                linear.bias.copy_(b[k])
        return net


def member_losses(logits: torch.Tensor, target: torch.Tensor, kind: str) -> torch.Tensor:
    """Each member's mean loss over its minibatch, `[K]` (model.mlp.classification_loss)."""
    k, b, n = logits.shape
    if target.dim() == 1:
        target = target.expand(k, b)
    if kind == "mse":
        one_hot = F.one_hot(target, n).to(logits.dtype)
        return F.mse_loss(logits.softmax(dim=-1), one_hot, reduction="none").mean(dim=(1, 2))
    flat = F.cross_entropy(logits.reshape(k * b, n), target.reshape(k * b), reduction="none")
    return flat.view(k, b).mean(dim=1)
