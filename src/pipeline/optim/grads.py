"""Gradients derived by hand, the way the classic material does it; tests hold them to autograd.

Notation: σ is the logistic sigmoid, p = softmax(z), δ_ij the Kronecker delta, B the batch size.
`mlp_backward` chains the pieces into backpropagation through `pipeline.model.MLP`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def sigmoid_grad(x: torch.Tensor) -> torch.Tensor:
    """σ'(x) = σ(x)·(1 − σ(x))."""
    s = torch.sigmoid(x)
    return s * (1 - s)


def tanh_grad(x: torch.Tensor) -> torch.Tensor:
    """tanh'(x) = 1 − tanh²(x)."""
    t = torch.tanh(x)
    return 1 - t * t


def relu_grad(x: torch.Tensor) -> torch.Tensor:
    """ReLU'(x) = 1 if x > 0 else 0 (at the kink x = 0 PyTorch also takes 0)."""
    return (x > 0).to(x.dtype)


def softmax_jacobian(z: torch.Tensor) -> torch.Tensor:
    """∂p_i/∂z_j = p_i·(δ_ij − p_j) for p = softmax(z) over the last axis: shape [..., n, n]."""
    p = torch.softmax(z, dim=-1)
    return torch.diag_embed(p) - p.unsqueeze(-1) * p.unsqueeze(-2)


def perceptron_grad(
    w: torch.Tensor, b: torch.Tensor, x: torch.Tensor, t: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """One sigmoid neuron O = σ(w·x + b) with error E = ½(O − t)²:

    ∂E/∂w_j = (O − t)·O(1 − O)·x_j,   ∂E/∂b = (O − t)·O(1 − O).
    """
    o = torch.sigmoid(w @ x + b)
    delta = (o - t) * o * (1 - o)
    return delta * x, delta


def mse_grad(y_hat: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """L = mean((ŷ − y)²) over all N elements: ∂L/∂ŷ = 2(ŷ − y)/N."""
    return 2 * (y_hat - y) / y_hat.numel()


def cross_entropy_grad(z: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """L = −mean_b log p_{b,target_b}: ∂L/∂z = (p − onehot(target))/B."""
    one_hot = F.one_hot(target, z.shape[-1]).to(z.dtype)
    return (torch.softmax(z, dim=-1) - one_hot) / len(z)


def softmax_mse_grad(z: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The model's `loss: mse`, L = mean((p − onehot)²), by the chain rule through softmax:

    ∂L/∂z_j = Σ_i ∂L/∂p_i · ∂p_i/∂z_j.
    """
    one_hot = F.one_hot(target, z.shape[-1]).to(z.dtype)
    dl_dp = mse_grad(torch.softmax(z, dim=-1), one_hot)  # [B, n]
    return torch.einsum("bi,bij->bj", dl_dp, softmax_jacobian(z))


ACTIVATION_GRADS = {nn.ReLU: relu_grad, nn.Sigmoid: sigmoid_grad, nn.Tanh: tanh_grad}
LOSS_GRADS = {"cross_entropy": cross_entropy_grad, "mse": softmax_mse_grad}


def mlp_backward(
    net: nn.Sequential, x: torch.Tensor, target: torch.Tensor, loss: str
) -> list[torch.Tensor]:
    """Backpropagation by hand through Linear/activation layers: the gradient of the loss for
    every parameter, in `net.parameters()` order.

    Forward: a_k = h_{k−1}·W_kᵀ + b_k,  h_k = φ(a_k).  Backward, with δ = ∂L/∂a_k:
    ∂L/∂W_k = δᵀ·h_{k−1},  ∂L/∂b_k = Σ_batch δ,  δ_{k−1} = (δ·W_k) ⊙ φ'(a_{k−1}).
    """
    with torch.no_grad():
        inputs = []  # what each layer received
        h = x
        for layer in net:
            inputs.append(h)
            h = layer(h)
        delta = LOSS_GRADS[loss](h, target)  # ∂L/∂logits
        grads: list[torch.Tensor] = []
        for layer, h_in in zip(reversed(net), reversed(inputs), strict=True):
            if isinstance(layer, nn.Linear):
                grads[:0] = [delta.T @ h_in, delta.sum(dim=0)]  # prepend W, b
                delta = delta @ layer.weight
            else:
                delta = delta * ACTIVATION_GRADS[type(layer)](h_in)
        return grads
