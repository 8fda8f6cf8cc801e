"""The MLP and the LightningModule that trains it with whichever optimizer it is handed."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh}
LOSSES = ("cross_entropy", "mse")

OptimizerFactory = Callable[[Iterable[torch.Tensor]], torch.optim.Optimizer]


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
        self.train_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes, average="micro")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], _: int) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        loss = classification_loss(logits, y, self.loss_kind)
        self.train_acc.update(logits, y)
        n = len(y)
        self.log("train/loss", loss, on_step=True, on_epoch=False, batch_size=n)
        self.log("train/loss_epoch", loss, on_step=False, on_epoch=True, batch_size=n)
        self.log("train/acc", self.train_acc, on_step=False, on_epoch=True, batch_size=n)
        return loss

    def _evaluate(self, batch: tuple[torch.Tensor, torch.Tensor], stage: str) -> None:
        x, y = batch
        logits = self(x)
        accuracy = self.val_acc if stage == "val" else self.test_acc
        accuracy.update(logits, y)
        loss = classification_loss(logits, y, self.loss_kind)
        self.log(f"{stage}/loss", loss, on_epoch=True, batch_size=len(y), sync_dist=True)
        self.log(f"{stage}/acc", accuracy, on_epoch=True, batch_size=len(y))

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], _: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], _: int) -> None:
        self._evaluate(batch, "test")

    def configure_optimizers(self) -> torch.optim.Optimizer:
        if self.optimizer_factory is None:
            raise RuntimeError("Classifier needs an optimizer factory, e.g. the `optimizer` config")
        return self.optimizer_factory(self.parameters())
