"""The LightningModule that trains the MLP with whichever optimizer it is handed.

Lightning owns the loop; a training batch is a group of minibatches, one optimizer step each,
taken by `step_each` (pipeline.training.grouped.step_each, handed in by the training code: the
model does not import the loop). Epoch metrics are float64 sums updated once per group
(`_record`) and handed to `self.log` once per epoch (`_log_epoch`): a `self.log` call costs
Lightning more Python than a whole training step of this MLP at batch 64. Lightning computes
the Metric objects at the epoch's end, which syncs them across DDP ranks, and resets them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import NamedTuple, Protocol

import pytorch_lightning as pl
import torch

from pipeline.model.metrics import Accuracy, MeanLoss
from pipeline.model.mlp import MLP, classification_loss
from pipeline.optim import schedules

OptimizerFactory = Callable[[Iterable[torch.Tensor]], torch.optim.Optimizer]
Group = Iterable[tuple[torch.Tensor, torch.Tensor]]
# (module, group, loss_of) -> what loss_of kept of each minibatch, one optimizer step each
StepEach = Callable[..., list]


class Probe(Protocol):
    """training.probe.Probe, as the model uses it (the model does not import the loop)."""

    def due(self, steps_done: int) -> bool: ...
    def measure(self, trainer, forward) -> dict[str, float]: ...


# In the checkpoint of a stop mid-epoch (training.signals): the epoch's training sums so far.
EPOCH_SUMS_KEY = "pipeline_train_epoch_sums"


class Minibatch(NamedTuple):
    """What one step leaves for the epoch metrics, kept on the device until its group ends."""

    loss: torch.Tensor
    predicted: torch.Tensor
    target: torch.Tensor


class Classifier(pl.LightningModule):
    def __init__(
        self,
        input_size: int = 784,
        hidden_sizes: list[int] = (200,),
        num_classes: int = 10,
        activation: str = "relu",
        loss: str = "cross_entropy",
        optimizer: OptimizerFactory | None = None,
        scheduler: schedules.SchedulerFactory | None = None,
        step_each: StepEach | None = None,
        probe: Probe | None = None,
    ) -> None:
        super().__init__()
        # The optimizer and schedule are partials from the config: the run params record them.
        self.save_hyperparameters(ignore=["optimizer", "scheduler", "step_each", "probe"])
        self.step_each = step_each
        self.probe = probe  # training.probe.Probe: probe/val_acc every N steps, or None (off)
        self.net = MLP(input_size, list(hidden_sizes), num_classes, activation)
        self.loss_kind = loss
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        for stage in ("train", "val", "test"):
            setattr(self, f"{stage}_acc", Accuracy())
            setattr(self, f"{stage}_loss", MeanLoss())
        self._epoch_logged: set[str] = set()
        self.automatic_optimization = False  # step_each steps the optimizer
        self.first_loss: torch.Tensor | None = None
        self.max_loss: torch.Tensor | None = None
        self._restored_sums: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None
        # Per test sample, in the test split's order: was it classified right? Filled by the
        # last test pass (trainer.test with the best checkpoint); paired tests between runs.
        self.test_correct: torch.Tensor | None = None
        self._test_correct: list[torch.Tensor] = []

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
        self._test_correct = []

    def on_test_epoch_end(self) -> None:
        correct = torch.cat(self._test_correct) if self._test_correct else torch.zeros(0)
        if self.trainer.world_size > 1:  # rank r holds samples r, r + world, ... (padded evenly)
            gathered = self.all_gather(correct.to(torch.uint8)).T.reshape(-1)
            correct = gathered[: len(self.trainer.datamodule.tensors["test"][1])]
        self.test_correct = correct.bool().cpu()
        self._test_correct = []

    def on_train_start(self) -> None:
        # A restored optimizer state brings its hyperparameters (torch's load_state_dict); the
        # config this session trains with wins, so that a resume's `optimizer.lr=` takes effect.
        keywords = getattr(self.optimizer_factory, "keywords", None)
        if keywords:
            optimizer = self.trainer.optimizers[0]
            if hasattr(optimizer, "update_groups"):  # groups that name the values differently
                optimizer.update_groups(keywords)
            else:
                for group in optimizer.param_groups:
                    group.update(keywords)
            if self.lr_schedulers() is not None:  # the schedule goes on from the new lr
                schedules.rebase(self.lr_schedulers())
        self._restored_sums = None  # used by now, if the run resumed mid-epoch

    def restore_training_sums(self) -> None:
        """The epoch's sums from a checkpoint written mid-epoch (training.grouped.GroupedLoop
        calls it at the start of a fit that goes on inside that epoch)."""
        for name, (total, count) in (self._restored_sums or {}).items():
            getattr(self, name).total.copy_(total)
            getattr(self, name).count.copy_(count)

    # The checkpoint of a stop mid-epoch (training.signals) carries the epoch's training sums,
    # so that a resumed run's train/acc and train/loss_epoch cover the whole epoch. Metric states
    # are not part of the module's state_dict: checkpoints of earlier versions still load.
    def training_sums(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        return {
            name: (getattr(self, name).total.clone(), getattr(self, name).count.clone())
            for name in ("train_acc", "train_loss")
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self._restored_sums = checkpoint.get(EPOCH_SUMS_KEY)

    def training_step(self, group: Group, _: int) -> None:
        """One optimizer step per minibatch of the group (pipeline.training.grouped)."""
        if self.step_each is None:
            raise RuntimeError("Classifier needs step_each: pipeline.training.grouped.step_each")
        first_step = self.global_step
        self._log_epoch("train")
        optimizer = self.optimizers().optimizer
        lrs: list[float] = []  # the lr each step took, when a schedule changes it
        step = self._step
        if self.lr_schedulers() is not None:

            def step(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, Minibatch]:
                lrs.append(optimizer.param_groups[0]["lr"])
                return self._step(x, y)

        _switch_mode(optimizer, "train")
        after = self._probe_at if self.probe is not None else None
        done = self.step_each(self, group, step, after)
        _switch_mode(optimizer, "eval")
        losses = self._record("train", done)
        self._track_losses(losses)
        self._log_losses(losses, first_step, lrs)

    def _probe_at(self, steps_done: int) -> None:
        """probe/val_acc and probe/train_time_s after `steps_done` steps, when due (training.probe);
        evaluated as validation is: in eval mode (schedule-free optimizers' `x`). The switch
        there and back is not exact in floating point, so the training weights are put back
        bit for bit: a probe never changes the run's trajectory."""
        if not self.probe.due(steps_done):
            return
        optimizer = self.optimizers().optimizer
        if callable(getattr(optimizer, "eval", None)):
            kept = [p.detach().clone() for p in self.parameters()]
            _switch_mode(optimizer, "eval")
            metrics = self.probe.measure(self.trainer, self)
            _switch_mode(optimizer, "train")
            with torch.no_grad():
                for p, before in zip(self.parameters(), kept, strict=True):
                    p.copy_(before)
        else:
            metrics = self.probe.measure(self.trainer, self)
        if self.trainer.is_global_zero:
            for logger in self.loggers:
                logger.log_metrics(metrics, step=steps_done - 1)

    def _track_losses(self, losses: torch.Tensor) -> None:
        """The first and the highest training loss, on the device (read by DivergenceGuard)."""
        if self.first_loss is None:
            self.first_loss = self.max_loss = losses[0]
        self.max_loss = torch.maximum(self.max_loss, losses.max())  # NaN stays NaN

    def _log_losses(self, losses: torch.Tensor, first_step: int, lrs: list[float]) -> None:
        """`train/loss` (and `train/lr` under a schedule) of every `log_every_n_steps`-th step:
        one device sync per group."""
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
                metrics = {"train/loss": value}
                if lrs:
                    metrics["train/lr"] = lrs[step - first_step]
                logger.log_metrics(metrics, step=step)

    def validation_step(self, group: Group, _: int) -> None:
        self._log_epoch("val")
        self._record("val", [self._step(x, y)[1] for x, y in group])

    def test_step(self, group: Group, _: int) -> None:
        self._log_epoch("test")
        done = [self._step(x, y)[1] for x, y in group]
        self._record("test", done)
        self._test_correct += [m.predicted == m.target for m in done]  # stays on the device

    def hidden_split(self) -> list[dict]:
        """Param groups: the hidden layers' weight matrices (`hidden: True`) and the rest
        (biases, the output layer), for optimizers such as Muon that treat them apart."""
        linears = [m for m in self.net if isinstance(m, torch.nn.Linear)]
        hidden = [m.weight for m in linears[:-1]]
        rest = [p for p in self.parameters() if all(p is not h for h in hidden)]
        return [{"params": hidden, "hidden": True}, {"params": rest, "hidden": False}]

    def build_optimizer(self) -> torch.optim.Optimizer:
        if self.optimizer_factory is None:
            raise RuntimeError("Classifier needs an optimizer factory, e.g. the `optimizer` config")
        cls = getattr(self.optimizer_factory, "func", None)
        split = getattr(cls, "wants_hidden_split", False)
        return self.optimizer_factory(self.hidden_split() if split else self.parameters())

    def configure_optimizers(self) -> torch.optim.Optimizer | dict:
        optimizer = self.build_optimizer()
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer, self.total_steps())
        # step_each steps it after every optimizer step (manual optimization).
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }

    def total_steps(self) -> int:
        """Optimizer steps of the whole run: the horizon of a schedule."""
        trainer = self.trainer
        total = trainer.datamodule.train_dataloader().count * trainer.max_epochs
        if trainer.max_steps is not None and trainer.max_steps >= 0:
            total = min(total, trainer.max_steps)
        return max(1, total)


def _switch_mode(optimizer: torch.optim.Optimizer, mode: str) -> None:
    """Schedule-free optimizers keep two points: they step from `y` in train mode and are
    evaluated at `x` in eval mode. Training steps in train mode only, one group at a time: so
    validation, test, every checkpoint and the logged model see `x`, and a resumed run switches
    exactly where the unbroken one did. Other optimizers have no modes."""
    switch = getattr(optimizer, mode, None)
    if callable(switch) and callable(getattr(optimizer, "eval", None)):
        switch()
