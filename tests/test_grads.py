"""Hand-derived gradients (pipeline.grads) against autograd, and gradcheck on the model.

Everything is float64: closed form and autograd then agree to rounding (~1e-16 relative), so
torch.testing's float64 defaults (rtol=1e-7, atol=1e-7) would hide nothing real; we tighten
to rtol=1e-10, atol=1e-12. gradcheck compares autograd with central finite differences.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pipeline.config.choices import ACTIVATIONS, LOSSES
from pipeline.model.mlp import MLP, classification_loss
from pipeline.optim import grads

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TIGHT = dict(rtol=1e-10, atol=1e-12)


@pytest.fixture(autouse=True)
def seeded():
    torch.manual_seed(0)


def autograd_of(f, x: torch.Tensor) -> torch.Tensor:
    """Elementwise derivative f'(x) via torch.autograd.grad (d Σf(x) / dx for elementwise f)."""
    x = x.clone().requires_grad_(True)
    (dx,) = torch.autograd.grad(f(x).sum(), x)
    return dx


@pytest.mark.parametrize(
    "closed_form, f",
    [
        (grads.sigmoid_grad, torch.sigmoid),
        (grads.tanh_grad, torch.tanh),
        (grads.relu_grad, torch.relu),
    ],
    ids=["sigmoid", "tanh", "relu"],
)
def test_activation_derivatives(closed_form, f):
    x = torch.randn(1000, dtype=torch.float64) * 4
    torch.testing.assert_close(closed_form(x), autograd_of(f, x), **TIGHT)


def test_relu_derivative_is_zero_or_one_and_zero_at_the_kink():
    x = torch.tensor([-2.0, -1e-300, 0.0, 1e-300, 3.0], dtype=torch.float64)
    assert grads.relu_grad(x).tolist() == [0, 0, 0, 1, 1]
    torch.testing.assert_close(grads.relu_grad(x), autograd_of(torch.relu, x), rtol=0, atol=0)


def test_softmax_jacobian():
    z = torch.randn(5, 10, dtype=torch.float64)
    jacobian = grads.softmax_jacobian(z)
    for b in range(len(z)):
        expected = torch.autograd.functional.jacobian(lambda v: torch.softmax(v, -1), z[b])
        torch.testing.assert_close(jacobian[b], expected, **TIGHT)
    # Each row of p sums to one, so each column of the Jacobian sums to zero.
    torch.testing.assert_close(jacobian.sum(dim=-2), torch.zeros(5, 10, dtype=torch.float64))


def test_perceptron_gradient_matches_backward():
    for _ in range(20):
        w = torch.randn(784, dtype=torch.float64, requires_grad=True)
        b = torch.randn((), dtype=torch.float64, requires_grad=True)
        x = torch.rand(784, dtype=torch.float64) / 28  # pixel-like, keeps σ away from 0 and 1
        t = torch.randint(0, 2, (), dtype=torch.float64)
        error = 0.5 * (torch.sigmoid(w @ x + b) - t) ** 2
        error.backward()
        dw, db = grads.perceptron_grad(w.detach(), b.detach(), x, t)
        torch.testing.assert_close(dw, w.grad, **TIGHT)
        torch.testing.assert_close(db, b.grad, **TIGHT)


def test_mse_gradient():
    y_hat = torch.randn(32, 10, dtype=torch.float64, requires_grad=True)
    y = torch.randn(32, 10, dtype=torch.float64)
    (expected,) = torch.autograd.grad(nn.functional.mse_loss(y_hat, y), y_hat)
    torch.testing.assert_close(grads.mse_grad(y_hat.detach(), y), expected, **TIGHT)


@pytest.mark.parametrize("loss", LOSSES)
def test_loss_gradients_wrt_logits(loss):
    z = torch.randn(32, 10, dtype=torch.float64, requires_grad=True)
    target = torch.randint(0, 10, (32,))
    (expected,) = torch.autograd.grad(classification_loss(z, target, loss), z)
    torch.testing.assert_close(grads.LOSS_GRADS[loss](z.detach(), target), expected, **TIGHT)


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("loss", LOSSES)
def test_backprop_by_hand_matches_autograd_on_the_model(activation, loss):
    """The real 784-200-10 MLP, a batch of random inputs: every parameter's gradient."""
    net = MLP(784, [200], 10, activation).double()
    x = torch.randn(64, 784, dtype=torch.float64)
    target = torch.randint(0, 10, (64,))
    classification_loss(net(x), target, loss).backward()
    by_hand = grads.mlp_backward(net, x, target, loss)
    assert len(by_hand) == len(list(net.parameters()))
    for grad, p in zip(by_hand, net.parameters(), strict=True):
        torch.testing.assert_close(grad, p.grad, **TIGHT)


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("loss", LOSSES)
def test_gradcheck_on_the_model(activation, loss):
    """Autograd through pipeline.model.MLP and its losses vs finite differences, float64.

    Every weight of the 784-200-10 net would need ~160k perturbations; the same layers with
    two hidden layers of a few units check every parameter, and the full-size net checks the
    input gradient of one sample.
    """
    small = MLP(12, [7, 5], 10, activation).double()
    names = [name for name, _ in small.named_parameters()]
    x = torch.randn(4, 12, dtype=torch.float64, requires_grad=True)
    target = torch.randint(0, 10, (4,))

    def loss_of(x, *params):
        out = torch.func.functional_call(small, dict(zip(names, params, strict=True)), (x,))
        return classification_loss(out, target, loss)

    params = [p.detach().clone().requires_grad_(True) for p in small.parameters()]
    assert torch.autograd.gradcheck(loss_of, (x, *params))

    full = MLP(784, [200], 10, activation).double()
    x_full = torch.randn(1, 784, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda x: classification_loss(full(x), target[:1], loss), (x_full,)
    )
