"""Learning-rate schedules (the `scheduler` config group), stepped once per optimizer step.

Each schedule is a multiplier f(s) of the configured lr at optimizer step s (0-based), applied by
torch's `LambdaLR`: lr(s) = lr * f(s) in closed form, so a resumed run (whose LambdaLR state comes
back from the checkpoint) and an unbroken one compute the same float at every step, and a
resume's `optimizer.lr=` moves the whole curve (`rebase`). The horizon T is the run's optimizer
steps (max_epochs x minibatches per epoch, or trainer.max_steps if smaller); tests hold each f to
its torch.optim.lr_scheduler twin step by step:

  constant       f = 1 (no scheduler at all: the seeds' behaviour)
  cosine         f = m + (1 - m)(1 + cos(pi s / T)) / 2                 CosineAnnealingLR
  warmup_cosine  f = (s + 1) / w for s < w, then cosine over T - w      SequentialLR(LinearLR, ..)
  linear         f = 1 + (m - 1) s / T                                  LinearLR
  step           f = gamma ** (s // ceil(T / (decays + 1)))             StepLR

m = min_lr_ratio, w = max(1, round(warmup_fraction * T)).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import torch
from omegaconf import DictConfig
from torch.optim.lr_scheduler import LambdaLR

SCHEDULES = ("constant", "cosine", "warmup_cosine", "linear", "step")
SchedulerFactory = Callable[[torch.optim.Optimizer, int], LambdaLR]


def warmup_steps(fraction: float, total: int) -> int:
    return max(1, round(fraction * total))


def step_size(decays: int, total: int) -> int:
    return max(1, math.ceil(total / (decays + 1)))


def multiplier(cfg: DictConfig, total: int) -> Callable[[int], float]:
    """f(s) of the schedule `cfg` over `total` optimizer steps."""
    name, m = cfg.name, float(cfg.get("min_lr_ratio", 0.0))

    def cosine(s: int, start: int = 0) -> float:
        span = max(1, total - start)
        return m + (1 - m) * (1 + math.cos(math.pi * min(s - start, span) / span)) / 2

    if name == "cosine":
        return cosine
    if name == "warmup_cosine":
        w = warmup_steps(float(cfg.warmup_fraction), total)
        return lambda s: (s + 1) / w if s < w else cosine(s, w)
    if name == "linear":
        return lambda s: 1 + (m - 1) * min(s, total) / total
    if name == "step":
        size, gamma = step_size(int(cfg.decays), total), float(cfg.gamma)
        return lambda s: gamma ** (s // size)
    raise ValueError(f"no schedule {name!r}: choose one of {', '.join(SCHEDULES)}")


def _build(cfg: DictConfig, optimizer: torch.optim.Optimizer, total: int) -> LambdaLR:
    return LambdaLR(optimizer, multiplier(cfg, max(1, total)))


def scheduler_factory(cfg: DictConfig | None) -> SchedulerFactory | None:
    """`(optimizer, total steps) -> LambdaLR`, or None for `constant` (and for a run recorded
    before schedules existed, whose config has no `scheduler`)."""
    if cfg is None or cfg.get("name", "constant") == "constant":
        return None
    return functools.partial(_build, cfg)


def rebase(scheduler: LambdaLR) -> None:
    """The groups' lr, just set from the config, becomes the schedule's base; each group's lr
    is then that base times f at the step the schedule has reached (a fresh run: f(0))."""
    groups = scheduler.optimizer.param_groups
    scheduler.base_lrs = [group["lr"] for group in groups]
    for group, base, f in zip(groups, scheduler.base_lrs, scheduler.lr_lambdas, strict=True):
        group["initial_lr"] = base
        group["lr"] = base * f(scheduler.last_epoch)
    scheduler._last_lr = [group["lr"] for group in groups]
