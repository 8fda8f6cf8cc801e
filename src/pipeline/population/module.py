"""The LightningModule of a population: one stacked model, one optimizer step for all members.

Lightning owns the loop as for a single run (a batch is a group of steps: training.grouped) and
so precision, devices and callbacks behave the same; what a single run hands to Lightning's
logger and ModelCheckpoint is per member here, so the module keeps it itself:

- epoch sums per member (float64, as model.metrics), recorded into each member's own run
  (population.records) at the steps a single run records them;
- each member's best weights (the single run's best checkpoint: val/acc strictly higher), which
  its test uses;
- divergence (training.divergence's rule, per member): the member is frozen (masked out of
  the update) and its run ends FAILED, tag diverged=true, while the others go on;
- the shared lr schedule: torch's LambdaLR over the stacked optimizer, whose group lr is the
  schedule's factor (optim.stacked_base), stepped after each optimizer step as a single run's;
  member k's `train/lr` is its own lr times that factor.
"""

from __future__ import annotations

import math

import pytorch_lightning as pl
import torch

from pipeline.model.classifier import Classifier
from pipeline.model.mlp import MLP
from pipeline.optim.schedules import SchedulerFactory
from pipeline.optim.stacked_base import Hypers, StackedOptimizer
from pipeline.population.model import StackedMLP, member_losses
from pipeline.population.records import MemberRecords
from pipeline.tracking.lifecycle import Status
from pipeline.training import grouped
from pipeline.training.callbacks import EpochTimer
from pipeline.training.divergence import Diverged
from pipeline.training.probe import ACC_KEY, Probe


class PopulationModule(pl.LightningModule):
    def __init__(
        self,
        nets: list[MLP],
        loss: str,
        optimizer: tuple[type[StackedOptimizer], Hypers],
        records: MemberRecords | None,  # set before fit (the runs exist after the module)
        timer: EpochTimer,
        diverge_factor: float | None = 1000,
        probe: Probe | None = None,
        scheduler: SchedulerFactory | None = None,
    ) -> None:
        super().__init__()
        self.scheduler_factory = scheduler
        self.net = StackedMLP(nets)
        self.loss_kind, self.optimizer_spec = loss, optimizer
        self.records, self.timer = records, timer
        self.probe = probe  # probe/val_acc every N steps, as a single run's (training.probe)
        self.factor = math.inf if diverge_factor is None else diverge_factor
        self.automatic_optimization = False  # grouped.step_each steps the optimizer
        k = self.net.size
        self.register_buffer("active", torch.ones(k, dtype=torch.bool), persistent=False)
        self.sums: dict[str, torch.Tensor] = {}  # stage -> [3, K]: loss·size, correct, count
        self.first_loss: torch.Tensor | None = None
        self.max_loss: torch.Tensor | None = None
        self.checked_at = 0
        self.best: list[torch.Tensor] | None = None
        self.best_acc = torch.full((k,), -math.inf)
        self.test_correct: torch.Tensor | None = None  # [K, test samples]
        self._test_correct: list[torch.Tensor] = []

    def configure_optimizers(self) -> StackedOptimizer | dict:
        cls, hypers = self.optimizer_spec
        split = getattr(cls, "wants_hidden_split", False)  # Muon: hidden weights apart
        optimizer = cls(self.net.hidden_split() if split else self.parameters(), hypers)
        if self.scheduler_factory is None:
            return optimizer
        # The single run's horizon (the same code: it reads only the trainer).
        scheduler = self.scheduler_factory(optimizer, Classifier.total_steps(self))
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }

    def _step(self, x: torch.Tensor, y: torch.Tensor):
        """Each member's loss on its minibatch; the sum has each member's own gradient."""
        logits = self.net(x)
        losses = member_losses(logits, y, self.loss_kind)
        correct = logits.detach().argmax(dim=-1) == y  # [K, B]
        return losses.sum(), (losses.detach(), correct)

    def _add(self, stage: str, done: list) -> torch.Tensor:
        losses = torch.stack([d[0] for d in done])  # [steps, K]
        sizes = torch.tensor([d[1].shape[1] for d in done], device=losses.device)
        total = self.sums.setdefault(
            stage, losses.new_zeros((3, losses.shape[1]), dtype=torch.float64)
        )
        total[0] += (losses.double() * sizes.unsqueeze(1)).sum(dim=0)
        total[1] += sum(d[1].sum(dim=1) for d in done).double()
        total[2] += sizes.sum()
        return losses

    def _epoch_values(self, stage: str) -> tuple[list[float], list[float]]:
        """Each member's mean loss and accuracy, as model.metrics computes them (float32)."""
        loss_sum, correct, count = self.sums.pop(stage)
        return (loss_sum / count).float().tolist(), (correct / count).float().tolist()

    def _members(self) -> list[int]:
        return [k for k, on in enumerate(self.active.tolist()) if on]

    # Training.
    def training_step(self, group, _: int) -> None:
        first_step = self.global_step
        factors: list[float] = []  # the schedule's factor at each step, under a schedule
        step = self._step
        if self.lr_schedulers() is not None:
            optimizer = self.optimizers().optimizer

            def step(x: torch.Tensor, y: torch.Tensor):
                factors.append(optimizer.param_groups[0]["lr"])
                return self._step(x, y)

        after = self._probe_at if self.probe is not None else None
        losses = self._add("train", grouped.step_each(self, group, step, after))
        if self.first_loss is None:
            self.first_loss, self.max_loss = losses[0].clone(), losses[0].clone()
        self.max_loss = torch.maximum(self.max_loss, losses.max(dim=0).values)  # NaN stays NaN
        every = self.trainer.log_every_n_steps
        steps = [s for s in range(first_step, first_step + len(losses)) if (s + 1) % every == 0]
        if steps and every > 0:  # one device sync per group with a logged step
            values = losses[[s - first_step for s in steps]].tolist()
            lrs = [self._lrs(factors[s - first_step]) for s in steps] if factors else None
            for k in self._members():
                for i, (s, row) in enumerate(zip(steps, values, strict=True)):
                    metrics = {"train/loss": row[k]}
                    if lrs is not None:  # as Classifier._log_losses: base lr · f(s), float64
                        metrics["train/lr"] = lrs[i][k]
                    self.records.log(k, metrics, s)
        if self.global_step - self.checked_at >= max(1, every):  # as DivergenceGuard
            self.checked_at = self.global_step
            self._check_divergence()

    def _lrs(self, factor: float) -> list[float]:
        return (self.trainer.optimizers[0].given["lr"] * factor).tolist()

    def _probe_at(self, steps_done: int) -> None:
        if self.probe.due(steps_done):
            metrics = self.probe.measure(self.trainer, self.net)
            for k in self._members():
                self.records.log(k, {**metrics, ACC_KEY: metrics[ACC_KEY][k]}, steps_done - 1)

    def _check_divergence(self) -> None:
        if self.first_loss is None:
            return
        bad = ~(self.max_loss <= self.factor * self.first_loss.abs()) & self.active
        if not bool(bad.any()):
            return
        optimizer = self.optimizer_spec[0].__name__
        for k in bad.nonzero().flatten().tolist():
            self.active[k] = False
            self.trainer.optimizers[0].freeze(k)  # masked out of every later update
            lr = float(self.optimizer_spec[1]["lr"][k])
            error = Diverged(
                f"MLflow run {self.records.run_ids[k]} marked FAILED, tag diverged=true: the "
                f"training loss reached {float(self.max_loss[k]):.4g} (it started at "
                f"{float(self.first_loss[k]):.4g}) by step {self.global_step}, epoch "
                f"{self.current_epoch + 1}, with {optimizer} lr={lr:g}: the member diverged and "
                "was frozen; try a smaller optimizer.lr"
            )
            self.records.end(k, Status.FAILED, error)
        if not bool(self.active.any()):
            self.trainer.should_stop = True

    def on_train_epoch_end(self) -> None:
        self._check_divergence()
        if "train" not in self.sums:
            return
        loss, acc = self._epoch_values("train")
        step, epoch = self.global_step - 1, float(self.current_epoch)
        for k in self._members():
            metrics = {"train/loss_epoch": loss[k], "train/acc": acc[k], "epoch": epoch}
            self.records.log(k, {**metrics, "epoch_time_s": self.timer.elapsed}, step)
        self.records.flush()

    # Validation: each member's best weights are those of its highest val/acc (strictly).
    def validation_step(self, group, _: int) -> None:
        with torch.no_grad():
            self._add("val", [self._step(x, y)[1] for x, y in group])

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking or "val" not in self.sums:
            self.sums.pop("val", None)
            return
        loss, acc = self._epoch_values("val")
        step, epoch = self.global_step - 1, float(self.current_epoch)
        for k in self._members():
            self.records.log(k, {"val/loss": loss[k], "val/acc": acc[k], "epoch": epoch}, step)
        acc32 = torch.tensor(acc, dtype=torch.float32)
        better = (acc32 > self.best_acc) & self.active.cpu()
        self.best_acc = torch.where(better, acc32, self.best_acc)
        weights = [p.detach() for p in self.net.parameters()]
        if self.best is None:
            self.best = [p.clone() for p in weights]
            return
        for best, p in zip(self.best, weights, strict=True):
            mask = better.to(p.device).view(-1, *[1] * (p.dim() - 1))
            best.copy_(torch.where(mask, p, best))

    # Test, with each member's best weights (the single run tests its best checkpoint).
    def on_test_start(self) -> None:
        if self.best is not None:
            with torch.no_grad():
                for p, best in zip(self.net.parameters(), self.best, strict=True):
                    p.copy_(best)
        self._test_correct = []

    def test_step(self, group, _: int) -> None:
        with torch.no_grad():
            done = [self._step(x, y)[1] for x, y in group]
        self._add("test", done)
        self._test_correct += [d[1] for d in done]

    def on_test_epoch_end(self) -> None:
        loss, acc = self._epoch_values("test")
        epoch = float(self.current_epoch)
        for k in self._members():
            metrics = {"test/loss": loss[k], "test/acc": acc[k], "epoch": epoch}
            self.records.log(k, metrics, self.global_step)
        self.test_correct = torch.cat(self._test_correct, dim=1).cpu()
        self._test_correct = []
