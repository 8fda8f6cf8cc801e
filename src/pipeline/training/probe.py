"""Time-to-target at step resolution: a cheap validation every N optimizer steps.

The per-epoch val/acc (selection, checkpoints, early stopping) resolves time-to-target only to
epochs. The probe adds, every `probe.every_n_steps` optimizer steps, the accuracy on a fixed
validation subset (the first `probe.examples` examples of the validation split: a random
sample of the data, the same for every run whatever its seed, as the split is drawn from
`data.split_seed`) as `probe/val_acc`, and the training seconds up to that step
as `probe/train_time_s`, both at the metric step of that optimizer step (0-based: after step s
of the run, step s - 1, as val/acc after an epoch). Nothing else reads them: they exist for the
fair comparison's steps and seconds to target (sweeps.protocol.analysis.to_target).

A single run (model.classifier) and a population (population.module) call `measure` from
`grouped.step_each`'s `after_step`, inside a group, so the step is exact whatever the group
size. The probe's own time is not training time: the epoch timer is paused while it runs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig

from pipeline.training.callbacks import EpochTimer

ACC_KEY, TIME_KEY = "probe/val_acc", "probe/train_time_s"


class Probe:
    def __init__(self, every_n_steps: int, examples: int, timer: EpochTimer) -> None:
        self.every, self.examples, self.timer = every_n_steps, examples, timer

    def due(self, steps_done: int) -> bool:
        """Whether the probe runs after `steps_done` optimizer steps of the run (1-based)."""
        return self.every > 0 and steps_done % self.every == 0

    def subset(self, trainer: pl.Trainer) -> tuple[torch.Tensor, torch.Tensor]:
        """The first `examples` validation examples, as the data module holds them (on the
        device, in the training dtype): views, no copy."""
        x, y = trainer.datamodule.tensors["val"]
        return x[: self.examples], y[: self.examples]

    def measure(
        self, trainer: pl.Trainer, forward: Callable[[torch.Tensor], torch.Tensor]
    ) -> dict[str, Any]:
        """The metrics to record now: the accuracy (float64 over the subset; one per member for
        stacked logits `[K, n, classes]`) and the training seconds so far."""
        x, y = self.subset(trainer)
        with self.timer.paused(), torch.no_grad():
            correct = forward(x).argmax(dim=-1) == y
            acc = correct.double().mean(dim=-1).tolist()
        return {ACC_KEY: acc, TIME_KEY: self.timer.so_far()}


def probe_from(cfg: DictConfig, timer: EpochTimer) -> Probe | None:
    """The config's probe (`probe.every_n_steps` > 0), or None (off, the default)."""
    probe = cfg.get("probe") or {}
    every = probe.get("every_n_steps") or 0
    return Probe(int(every), int(probe.get("examples", 2000)), timer) if every else None
