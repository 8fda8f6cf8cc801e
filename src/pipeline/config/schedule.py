"""Checks of the `scheduler` group (pipeline.optim.schedules): before any run exists."""

from __future__ import annotations

from omegaconf import DictConfig

from pipeline.config.rules import ConfigError, check, finite_floats, number, positive_int
from pipeline.optim.schedules import SCHEDULES

# What each schedule reads; any other key is a typo or another schedule's.
KEYS = {
    "constant": (),
    "cosine": ("min_lr_ratio",),
    "warmup_cosine": ("warmup_fraction", "min_lr_ratio"),
    "linear": ("min_lr_ratio",),
    "step": ("decays", "gamma"),
}


def validate_scheduler(cfg: DictConfig) -> None:
    sched = cfg.get("scheduler")
    if sched is None:  # a run recorded before schedules existed: constant
        return
    name = sched.get("name")
    allowed = f"choose one of {', '.join(SCHEDULES)}"
    check(cfg, "scheduler.name", name in SCHEDULES, allowed, "cosine")
    for key in sched:
        if key != "name" and key not in KEYS[name]:
            takes = ", ".join(KEYS[name]) or "nothing"
            raise ConfigError(
                f"scheduler.{key} is not a setting of scheduler={name}; it takes {takes}"
            )
    finite_floats(cfg, "scheduler")
    if "min_lr_ratio" in sched:
        number(cfg, "scheduler.min_lr_ratio", 0, 1, "0.0", high_open=False)
    if "warmup_fraction" in sched:
        number(cfg, "scheduler.warmup_fraction", 0, 1, "0.05", low_open=True)
    if "gamma" in sched:
        number(cfg, "scheduler.gamma", 0, 1, "0.1", low_open=True, high_open=False)
    if "decays" in sched:
        positive_int(cfg, "scheduler.decays", "2")
