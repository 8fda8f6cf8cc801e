"""Stacked optimizers: member k of a population steps as torch.optim steps model k alone, to the
bit in float32 on a CPU (both take torch's single-tensor path there)."""

from __future__ import annotations

import math

import lion_pytorch
import prodigyopt
import pytest
import schedulefree
import torch
from torch.optim.lr_scheduler import LambdaLR

from pipeline.optim.muon import MuonAdamW
from pipeline.optim.stacked_registry import member_hypers

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
    "nadam": (
        torch.optim.NAdam,
        [
            {"lr": lr, "betas": b, "weight_decay": wd, "momentum_decay": md}
            for lr, b, wd, md in [
                (0.01, (0.9, 0.999), 0, 0.004),
                (0.002, (0.8, 0.99), 0.01, 0.01),
                (0.05, (0.5, 0.9), 0.1, 0.004),
                (0.003, (0.95, 0.9999), 0, 0.001),
            ]
        ],
    ),
    # beta2 = 0.9 turns the rectification on at step 6, 0.999 at step 6 too, 0.6 never
    # (rho_inf <= 5): members that rectify and members that do not, in one step.
    "radam": (
        torch.optim.RAdam,
        [
            {"lr": lr, "betas": b, "weight_decay": wd}
            for lr, b, wd in [
                (0.01, (0.9, 0.999), 0),
                (0.002, (0.8, 0.6), 0.01),
                (0.05, (0.5, 0.9), 0.1),
                (0.003, (0.95, 0.99), 0),
            ]
        ],
    ),
    "adamax": (
        torch.optim.Adamax,
        [
            {"lr": lr, "betas": b, "eps": eps, "weight_decay": wd}
            for lr, b, eps, wd in [
                (0.01, (0.9, 0.999), 1e-8, 0),
                (0.002, (0.8, 0.99), 1e-6, 0.01),
                (0.05, (0.5, 0.9), 1e-8, 0.1),
                (0.003, (0.95, 0.9999), 1e-4, 0),
            ]
        ],
    ),
    "lion": (
        lion_pytorch.Lion,
        [
            {"lr": lr, "betas": b, "weight_decay": wd, "decoupled_weight_decay": dwd}
            for lr, b, wd, dwd in [
                (0.001, (0.9, 0.99), 0.0, False),
                (0.0003, (0.8, 0.9), 0.1, False),
                (0.002, (0.95, 0.98), 0.01, True),
                (0.0001, (0.5, 0.99), 1.0, False),
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
    for cls in (prodigyopt.Prodigy, schedulefree.AdamWScheduleFree):
        with pytest.raises(ValueError, match=f"{cls.__name__} has no stacked"):
            member_hypers(cls, [{"lr": 0.1}])
    with pytest.raises(ValueError, match="optimizer.decoupled_weight_decay=True has no stacked"):
        member_hypers(torch.optim.NAdam, [{"lr": 0.1, "decoupled_weight_decay": True}])
    with pytest.raises(ValueError, match="ns_steps must be the same for every member"):
        member_hypers(MuonAdamW, [{"ns_steps": 5}, {"ns_steps": 4}])
    with pytest.raises(ValueError, match="Lion.*invalid arguments"):
        member_hypers(lion_pytorch.Lion, [{"lr": -1.0}])
    with pytest.raises(ValueError, match="Invalid learning rate"):
        member_hypers(torch.optim.Adam, [{"lr": -1.0}])


@pytest.mark.parametrize("preset", ["adam", "lion", "sgd"])
def test_a_shared_schedule_scales_each_members_lr(preset):
    """LambdaLR over the stacked optimizer (its groups' lr: the schedule's factor) against each
    member's own LambdaLR with the same schedule: every member's lr is its own times f(s)."""
    cls, kwargs = MEMBERS[preset]
    f = lambda s: 0.5 * (1 + math.cos(math.pi * s / 12)) if s < 12 else 0.1  # noqa: E731
    gen = torch.Generator().manual_seed(1)
    start = torch.randn(K, 6, generator=gen)
    c, d = torch.rand(K, 6, generator=gen), torch.randn(K, 6, generator=gen)
    stacked_cls, hypers = member_hypers(cls, kwargs)
    p = start.clone().requires_grad_()
    population = stacked_cls([p], hypers)
    schedule = LambdaLR(population, f)
    alone = [start[k].clone().requires_grad_() for k in range(K)]
    optims = [cls([alone[k]], **kwargs[k]) for k in range(K)]
    schedules = [LambdaLR(o, f) for o in optims]
    for _ in range(15):
        population.zero_grad()
        loss_of(p, c, d).backward()
        population.step()
        schedule.step()
        for k in range(K):
            optims[k].zero_grad()
            loss_of(alone[k], c[k], d[k]).backward()
            optims[k].step()
            schedules[k].step()
    for k in range(K):
        assert torch.equal(p[k], alone[k])
        assert float(population.hypers["lr"][k]) == optims[k].param_groups[0]["lr"]


def test_muon_members_step_as_muon_adamw_alone():
    """Muon (Newton-Schulz as bmm on [K, out, in]) on a hidden weight, AdamW on the rest, each
    member against pipeline.optim.muon.MuonAdamW (torch.optim.Muon + AdamW) run alone."""
    kwargs = [
        {"lr": lr, "weight_decay": wd, "momentum": mu, "nesterov": nest, "adjust_lr_fn": fn}
        for lr, wd, mu, nest, fn in [
            (0.01, 0.1, 0.95, True, "match_rms_adamw"),
            (0.003, 0.0, 0.9, False, "match_rms_adamw"),
            (0.02, 0.01, 0.8, True, None),
            (0.001, 0.5, 0.95, True, "spectral_unclamped"),
        ]
    ]
    kwargs[1]["adamw_betas"] = (0.8, 0.99)
    gen = torch.Generator().manual_seed(2)
    shapes = [(K, 7, 12), (K, 12, 7), (K, 7), (K, 3, 7), (K, 3)]  # 2 hidden (wide, tall), rest
    start = [torch.randn(s, generator=gen) for s in shapes]
    coef = [(torch.rand(s, generator=gen), torch.randn(s, generator=gen)) for s in shapes]
    stacked_cls, hypers = member_hypers(MuonAdamW, kwargs)
    params = [s.clone().requires_grad_() for s in start]
    population = stacked_cls(
        [{"params": params[:2], "hidden": True}, {"params": params[2:], "hidden": False}], hypers
    )
    alone = [[s[k].clone().requires_grad_() for s in start] for k in range(K)]
    optims = [
        MuonAdamW(
            [{"params": a[:2], "hidden": True}, {"params": a[2:], "hidden": False}], **kwargs[k]
        )
        for k, a in enumerate(alone)
    ]
    for _ in range(10):
        population.zero_grad()
        sum(loss_of(p, c, d) for p, (c, d) in zip(params, coef, strict=True)).backward()
        population.step()
        for k in range(K):
            optims[k].zero_grad()
            sum(loss_of(p, c[k], d[k]) for p, (c, d) in zip(alone[k], coef, strict=True)).backward()
            optims[k].step()
    for k in range(K):
        for p, q in zip(params, alone[k], strict=True):
            assert torch.equal(p[k], q)
    assert not torch.equal(params[0].detach(), start[0])
