"""Epoch metrics as float64 sums, updated once per group of minibatches."""

from __future__ import annotations

import torch
from torchmetrics import Metric


class RunningMean(Metric):
    """`total / count` over an epoch; DDP ranks' sums are added when Lightning computes it.

    Updated once per group of minibatches, not per step (see `Classifier._record`): a
    torchmetrics update costs Python time comparable to a whole training step of this MLP. The
    sums are float64, so that how the steps are grouped (which changes the order of the
    additions) does not change the recorded float32 mean.
    """

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("total", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def compute(self) -> torch.Tensor:
        return (self.total / self.count).float()


class Accuracy(RunningMean):
    """Share of samples whose predicted class is the label (= torchmetrics' micro accuracy)."""

    def update(self, predicted: torch.Tensor, target: torch.Tensor) -> None:
        self.total.add_((predicted == target).sum())
        self.count.add_(target.numel())


class MeanLoss(RunningMean):
    """Minibatch losses weighted by their sizes (= Lightning's on_epoch mean of a logged loss)."""

    def update(self, losses: torch.Tensor, sizes: torch.Tensor) -> None:
        self.total.add_((losses.double() * sizes).sum())
        self.count.add_(sizes.sum())
