"""The MLP and the LightningModule that trains it with whichever optimizer it is handed."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import NamedTuple

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.strategies import SingleDeviceStrategy
from torch import nn
from torchmetrics import Metric

from pipeline.choices import ACTIVATIONS, LOSSES  # noqa: F401  (LOSSES: re-exported)

OptimizerFactory = Callable[[Iterable[torch.Tensor]], torch.optim.Optimizer]
EPOCH_SUMS_KEY = "pipeline_train_epoch_sums"  # in a stop's checkpoint (faults.GracefulStop)


class Minibatch(NamedTuple):
    """What one step leaves for the epoch metrics, kept on the device until its group ends."""

    loss: torch.Tensor
    predicted: torch.Tensor
    target: torch.Tensor


class MLP(nn.Sequential):
    """input -> [Linear -> activation] per hidden size -> Linear -> logits."""

    def __init__(
        self, input_size: int, hidden_sizes: list[int], num_classes: int, activation: str
    ) -> None:
        layers: list[nn.Module] = []
        width = input_size
        for hidden in hidden_sizes:
            layers += [nn.Linear(width, hidden), ACTIVATIONS[activation]()]
            width = hidden
        layers.append(nn.Linear(width, num_classes))
        super().__init__(*layers)


def classification_loss(logits: torch.Tensor, target: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "mse":  # the classic derivation: squared error of softmax outputs vs one-hot
        one_hot = F.one_hot(target, logits.shape[-1]).to(logits.dtype)
        return F.mse_loss(logits.softmax(dim=-1), one_hot)
    return F.cross_entropy(logits, target)


class RunningMean(Metric):
    """`total / count` over an epoch; DDP ranks' sums are added when Lightning computes it.

    Updated once per group of minibatches, not per step (see `Classifier._record`): a
    torchmetrics update costs ~25 µs of Python, and two of them per step were ~7% of a training
    step at batch 64. The sums are float64, so that how the steps are grouped (which changes the
    order of the additions) does not change the recorded float32 mean.
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


class Classifier(pl.LightningModule):
    def __init__(
        self,
        input_size: int = 784,
        hidden_sizes: list[int] = (200,),
        num_classes: int = 10,
        activation: str = "relu",
        loss: str = "cross_entropy",
        optimizer: OptimizerFactory | None = None,
    ) -> None:
        super().__init__()
        # The optimizer is a partial from the config: the run params record it, not the checkpoint.
        self.save_hyperparameters(ignore=["optimizer"])
        self.net = MLP(input_size, list(hidden_sizes), num_classes, activation)
        self.loss_kind = loss
        self.optimizer_factory = optimizer
        # Metrics are updated once per group of minibatches (`_record`) and handed to `self.log`
        # once per epoch (`_log_epoch`): each `self.log` call costs Lightning ~1-3 ms of Python,
        # more than a whole training step of this MLP at batch 64. Lightning computes the Metric
        # objects at epoch end, which syncs them across DDP ranks, and resets them.
        for stage in ("train", "val", "test"):
            setattr(self, f"{stage}_acc", Accuracy())
            setattr(self, f"{stage}_loss", MeanLoss())
        self._epoch_logged: set[str] = set()
        self.automatic_optimization = False
        self.plain_steps = False  # decided in on_train_start
        self.first_loss: torch.Tensor | None = None
        self.max_loss: torch.Tensor | None = None
        self._restored_sums: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def _log_epoch(self, stage: str) -> None:
        """Register the stage's epoch metrics with Lightning once per epoch (they are objects)."""
        if stage not in self._epoch_logged:
            self._epoch_logged.add(stage)
            loss_name = "train/loss_epoch" if stage == "train" else f"{stage}/loss"
            self.log(loss_name, getattr(self, f"{stage}_loss"), on_step=False, on_epoch=True)
            self.log(f"{stage}/acc", getattr(self, f"{stage}_acc"), on_step=False, on_epoch=True)

    def _step(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, Minibatch]:
        """The loss (for backward) and what the epoch metrics need of this minibatch."""
        logits = self(x)
        loss = classification_loss(logits, y, self.loss_kind)
        return loss, Minibatch(loss.detach(), logits.detach().argmax(dim=-1), y)

    def _record(self, stage: str, done: list[Minibatch]) -> torch.Tensor:
        """Adds a group's minibatches to the stage's epoch metrics; returns their losses."""
        losses = torch.stack([m.loss for m in done])
        sizes = torch.tensor([len(m.target) for m in done], device=losses.device)
        getattr(self, f"{stage}_loss").update(losses, sizes)
        predicted, target = (
            torch.cat([m.predicted for m in done]),
            torch.cat([m.target for m in done]),
        )
        getattr(self, f"{stage}_acc").update(predicted, target)
        return losses

    def on_train_epoch_start(self) -> None:
        self._epoch_logged.discard("train")

    def on_validation_epoch_start(self) -> None:
        self._epoch_logged.discard("val")

    def on_test_epoch_start(self) -> None:
        self._epoch_logged.discard("test")

    def on_train_start(self) -> None:
        # Lightning's own step (`manual_backward` + its optimizer wrapper) runs ~0.5 ms of hooks
        # per step. It has work to do only when gradients are synced across processes (DDP's
        # reducer) or fp16 losses are scaled; otherwise the plain PyTorch step is the same step.
        strategy = self.trainer.strategy
        self.plain_steps = isinstance(strategy, SingleDeviceStrategy) and (
            getattr(strategy.precision_plugin, "scaler", None) is None
        )
        if self._restored_sums and self.trainer.fit_loop.epoch_loop.restarting:  # mid-epoch
            for name, (total, count) in self._restored_sums.items():
                getattr(self, name).total.copy_(total)
                getattr(self, name).count.copy_(count)
        self._restored_sums = None

    # The checkpoint of a stop mid-epoch (faults.GracefulStop) carries the epoch's training sums,
    # so that a resumed run's train/acc and train/loss_epoch cover the whole epoch. Metric states
    # are not part of the module's state_dict: checkpoints of earlier versions still load.
    def training_sums(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        return {
            name: (getattr(self, name).total.clone(), getattr(self, name).count.clone())
            for name in ("train_acc", "train_loss")
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self._restored_sums = checkpoint.get(EPOCH_SUMS_KEY)

    def training_step(self, group: Iterable[tuple[torch.Tensor, torch.Tensor]], _: int) -> None:
        """One optimizer step per minibatch of the group (see `data.Groups`)."""
        optimizer = self.optimizers()
        first_step = self.global_step  # Lightning's step (not the plain one) moves it on
        self._log_epoch("train")
        done: list[Minibatch] = []
        for x, y in group:
            optimizer.zero_grad()
            loss, minibatch = self._step(x, y)
            if self.plain_steps:
                loss.backward()
                optimizer.optimizer.step()
            else:
                self.manual_backward(loss)
                optimizer.step()
            done.append(minibatch)
        losses = self._record("train", done)
        self._track_losses(losses)
        self._log_losses(losses, first_step)
        self._count_steps(len(done))

    def _track_losses(self, losses: torch.Tensor) -> None:
        """The first and the highest training loss, on the device (read by DivergenceGuard)."""
        if self.first_loss is None:
            self.first_loss = self.max_loss = losses[0]
        self.max_loss = torch.maximum(self.max_loss, losses.max())  # NaN stays NaN

    def _log_losses(self, losses: torch.Tensor, first_step: int) -> None:
        """`train/loss` of every `log_every_n_steps`-th step: one device sync per group."""
        every = self.trainer.log_every_n_steps
        if every <= 0 or not self.trainer.is_global_zero or not self.loggers:
            return
        steps = [
            step for step in range(first_step, first_step + len(losses)) if (step + 1) % every == 0
        ]
        if not steps:  # no device sync for a group without a logged step
            return
        values = losses[[step - first_step for step in steps]].tolist()
        for logger in self.loggers:
            for step, value in zip(steps, values, strict=True):
                logger.log_metrics({"train/loss": value}, step=step)

    def _count_steps(self, steps: int) -> None:
        """Lightning counts one optimizer step (`global_step`: checkpoints, max_steps) and one
        logger step (the metric step axis) per `training_step`; a group takes `steps`. Its
        counters are moved on here so that both count optimizer steps, as they would without
        groups; the plain step bypasses the wrapper that counts them otherwise."""
        loop = self.trainer.fit_loop.epoch_loop
        if self.plain_steps:
            loop.manual_optimization.optim_step_progress.increment_by(steps)
        loop._batches_that_stepped += steps - 1

    def validation_step(self, group: Iterable[tuple[torch.Tensor, torch.Tensor]], _: int) -> None:
        self._log_epoch("val")
        self._record("val", [self._step(x, y)[1] for x, y in group])

    def test_step(self, group: Iterable[tuple[torch.Tensor, torch.Tensor]], _: int) -> None:
        self._log_epoch("test")
        self._record("test", [self._step(x, y)[1] for x, y in group])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        if self.optimizer_factory is None:
            raise RuntimeError("Classifier needs an optimizer factory, e.g. the `optimizer` config")
        return self.optimizer_factory(self.parameters())
