"""Stacked optimizers: member k of a population steps as torch.optim steps model k alone, to the
bit in float32 on a CPU (both take torch's single-tensor path there)."""

from __future__ import annotations

import pytest
import torch

from pipeline.optim.stacked import member_hypers

K = 4
# Per preset: each member's torch.optim arguments (lr and another hyperparameter differ).
MEMBERS = {
    "sgd": (
        torch.optim.SGD,
        [
            {"lr": lr, "weight_decay": wd}
            for lr, wd in [(0.05, 0), (0.02, 0.01), (0.08, 0), (0.01, 0.1)]
        ],
    ),
    "momentum": (
        torch.optim.SGD,
        [
            {"lr": 0.05, "momentum": mu, "dampening": d}
            for mu, d in [(0.9, 0), (0.5, 0.1), (0.0, 0.3), (0.99, 0)]
        ],
    ),
    "nesterov": (
        torch.optim.SGD,
        [
            {"lr": lr, "momentum": mu, "nesterov": True}
            for lr, mu in [(0.02, 0.9), (0.05, 0.5), (0.01, 0.8), (0.08, 0.3)]
        ],
    ),
    "adagrad": (
        torch.optim.Adagrad,
        [
            {"lr": lr, "lr_decay": d, "initial_accumulator_value": a}
            for lr, d, a in [(0.1, 0, 0), (0.05, 0.01, 0.1), (0.2, 0, 1.0), (0.01, 0.1, 0)]
        ],
    ),
    "rmsprop": (
        torch.optim.RMSprop,
        [
            {"lr": lr, "alpha": a, "momentum": m, "centered": c}
            for lr, a, m, c in [
                (0.01, 0.9, 0, False),
                (0.001, 0.99, 0.9, True),
                (0.005, 0.8, 0.5, False),
                (0.02, 0.95, 0, True),
            ]
        ],
    ),
    "adam": (
        torch.optim.Adam,
        [
            {"lr": lr, "betas": b, "amsgrad": a, "weight_decay": wd}
            for lr, b, a, wd in [
                (0.01, (0.9, 0.999), False, 0),
                (0.001, (0.8, 0.99), True, 0.01),
                (0.05, (0.5, 0.9), False, 0.1),
                (0.003, (0.95, 0.9999), True, 0),
            ]
        ],
    ),
    "adamw": (
        torch.optim.AdamW,
        [
            {"lr": lr, "betas": b, "weight_decay": wd}
            for lr, b, wd in [
                (0.01, (0.9, 0.999), 0.01),
                (0.001, (0.8, 0.99), 0.1),
                (0.05, (0.5, 0.9), 0.0),
                (0.003, (0.95, 0.9999), 0.5),
            ]
        ],
    ),
    "adadelta": (
        torch.optim.Adadelta,
        [
            {"lr": lr, "rho": rho, "eps": eps}
            for lr, rho, eps in [
                (1.0, 0.9, 1e-6),
                (0.5, 0.95, 1e-5),
                (2.0, 0.8, 1e-6),
                (0.1, 0.99, 1e-4),
            ]
        ],
    ),
}


def loss_of(p: torch.Tensor, c: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """A non-quadratic loss per member, summed: each member's gradient is its own."""
    return (c * p**2 + d * torch.sin(3 * p)).sum()


@pytest.mark.parametrize("preset", sorted(MEMBERS))
def test_each_member_steps_as_torch_optim_alone(preset):
    cls, kwargs = MEMBERS[preset]
    gen = torch.Generator().manual_seed(0)
    shapes = [(K, 5, 3), (K, 3)]
    start = [torch.randn(s, generator=gen, dtype=torch.float32) for s in shapes]
    coef = [
        (
            torch.rand(s, generator=gen, dtype=torch.float32),
            torch.randn(s, generator=gen, dtype=torch.float32),
        )
        for s in shapes
    ]
    stacked_cls, hypers = member_hypers(cls, kwargs)
    params = [p.clone().requires_grad_() for p in start]
    population = stacked_cls(params, hypers)
    alone = [[p[k].clone().requires_grad_() for p in start] for k in range(K)]
    torch_optims = [cls(alone[k], **kwargs[k]) for k in range(K)]
    for step in range(30):
        if step == 20:  # member 1 frozen: it stops where it is, the others go on
            population.freeze(1)
            frozen = [p[1].detach().clone() for p in params]
        population.zero_grad()
        sum(loss_of(p, c, d) for p, (c, d) in zip(params, coef, strict=True)).backward()
        population.step()
        for k in range(K):
            if step >= 20 and k == 1:
                continue
            torch_optims[k].zero_grad()
            sum(loss_of(p, c[k], d[k]) for p, (c, d) in zip(alone[k], coef, strict=True)).backward()
            torch_optims[k].step()
    for k in range(K):
        if k == 1:
            for p, f in zip(params, frozen, strict=True):
                assert torch.equal(p[1], f)
            continue
        for p, q in zip(params, alone[k], strict=True):
            assert torch.equal(p[k], q)  # torch's own rounding, bit for bit
    moved = [not torch.equal(p.detach(), s) for p, s in zip(params, start, strict=True)]
    assert all(moved)


def test_options_without_a_stacked_form_are_refused():
    with pytest.raises(ValueError, match="optimizer.maximize=True has no stacked"):
        member_hypers(torch.optim.SGD, [{"lr": 0.1, "maximize": True}])
    with pytest.raises(ValueError, match="NAdam has no stacked"):
        member_hypers(torch.optim.NAdam, [{"lr": 0.1}])
    with pytest.raises(ValueError, match="Invalid learning rate"):
        member_hypers(torch.optim.Adam, [{"lr": -1.0}])
