"""A population's checkpoint: what it holds and when it is written (population.resume: how the
same sweep command goes on from it, mid-epoch).

One file for all K members, `<population folder>/checkpoints/last.ckpt` (every member's run
points to that folder with its `checkpoint.dir` tag; a file per member would repeat the
shared loop state K times). It is Lightning's checkpoint of the PopulationModule, written at
the moments a single run writes its `last.ckpt`: each epoch's end (ModelCheckpoint) and a
Ctrl-C / SIGTERM at a group's end inside an epoch (`StopAtGroup`). Lightning keeps the stacked
weights, the stacked optimizer's state of every member and the loop's counters; the training
loader keeps its position (data.MemberGroups.state_dict); `POPULATION_KEY` adds what the module
holds per member (frozen mask, best weights and val/acc, the epoch's running sums, the loss
seen first and at most) and which MLflow run each member is.

Write-ahead: before the file is written, every point it counts as done is in the population's
journal and fsynced; at an epoch's end that includes the epoch's training metrics, which the
module logs only after this checkpoint (members' records then skip them: MemberRecords.credit).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytorch_lightning as pl

from pipeline.errors import Stopped
from pipeline.population.records import MemberRecords
from pipeline.tracking.replay import MANIFEST
from pipeline.training import grouped
from pipeline.training.signals import SignalFlag

POPULATION_KEY = "population"  # inside the checkpoint: {"id", "run_ids", "state"}
CHECKPOINT_NAME = "last.ckpt"
# The stacked optimizers' reused temporaries (StackedOptimizer.buffer): written before read,
# so not saved (a third of an Adam population's file).
TEMPORARIES = frozenset({"tmp", "denom", "std", "avg", "avg_centered", "delta"})


def write_manifest(folder: Path, population_id: str, run_ids: list[str], uri: str) -> None:
    """Which runs this folder's journal may write (tracking.replay confirms each in the store)."""
    folder.mkdir(parents=True, exist_ok=True)
    text = json.dumps({"population": population_id, "run_ids": run_ids, "uri": uri})
    (folder / f"{MANIFEST}.tmp").write_text(text)
    (folder / f"{MANIFEST}.tmp").replace(folder / MANIFEST)


def module_state(module) -> dict:
    """What the module keeps per member beyond its weights (tensors, lists and numbers only)."""
    return {
        "active": module.active.cpu().clone(),
        "best": None if module.best is None else [b.cpu() for b in module.best],
        "best_acc": module.best_acc.clone(),
        "train_sums": None if "train" not in module.sums else module.sums["train"].cpu(),
        "first_loss": None if module.first_loss is None else module.first_loss.cpu(),
        "max_loss": None if module.max_loss is None else module.max_loss.cpu(),
        "checked_at": int(module.checked_at),
    }


def restore_module(module, state: dict) -> None:
    device = module.active.device
    module.active.copy_(state["active"].to(device))
    module.best = None if state["best"] is None else [b.to(device) for b in state["best"]]
    module.best_acc = state["best_acc"].clone()
    module.sums = {} if state["train_sums"] is None else {"train": state["train_sums"].to(device)}
    for name in ("first_loss", "max_loss"):
        setattr(module, name, None if state[name] is None else state[name].to(device))
    module.checked_at = state["checked_at"]


class StopAtGroup(pl.Callback):
    """Checkpoints and signals, as training.signals.StopAtBoundary for a single run: a signal
    inside an epoch stops at the group's end with a checkpoint; at an epoch's last group it
    stops at the next group's start (that epoch's own checkpoint is the newest), or at the end.
    Every checkpoint carries POPULATION_KEY and is preceded by the journal's commit."""

    def __init__(self, flag: SignalFlag, path: Path, records: MemberRecords, pid: str) -> None:
        self.flag, self.path, self.records, self.id = flag, path, records, pid
        self._mid_epoch = False
        self._weights: dict | None = None

    def on_train_start(self, trainer, pl_module) -> None:
        if self._weights is not None:  # again, now in the trainer's precision (see on_load)
            pl_module.load_state_dict(self._weights)
            self._weights = None
        loader = trainer.train_dataloader
        loader.groups_done = lambda: grouped.groups_done(trainer)
        for k in (~pl_module.active).nonzero().flatten().tolist():  # frozen before the stop
            trainer.optimizers[0].freeze(k)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.flag.check()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.flag.received is None or batch_idx + 1 >= trainer.num_training_batches:
            return
        self._mid_epoch = True
        try:
            trainer.save_checkpoint(self.path)
        finally:
            self._mid_epoch = False
        raise Stopped(self.flag.received)

    def on_train_end(self, trainer, pl_module) -> None:
        self.flag.check()

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        if not self._mid_epoch and "train" in pl_module.sums:  # an epoch's end: log it ahead
            self._epoch_ahead(trainer, pl_module)
        self.records.flush()
        self.records.writer.commit()
        for saved in checkpoint.get("optimizer_states", []):  # copies: the live state stays
            saved["state"] = {
                i: {k: v for k, v in per.items() if k not in TEMPORARIES}
                for i, per in saved["state"].items()
            }
        checkpoint[POPULATION_KEY] = {
            "id": self.id,
            "run_ids": list(self.records.run_ids),
            "state": module_state(pl_module),
        }

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        # Lightning loads the weights before it converts the module to the trainer's precision:
        # float64 weights pass through float32 there. The exact ones are loaded at train start.
        self._weights = checkpoint["state_dict"]
        restore_module(pl_module, checkpoint[POPULATION_KEY]["state"])

    def _epoch_ahead(self, trainer, module) -> None:
        """The epoch's training metrics as module.on_train_epoch_end will log them."""
        loss_sum, correct, count = module.sums["train"]
        loss, acc = (loss_sum / count).float().tolist(), (correct / count).float().tolist()
        step, epoch = trainer.global_step - 1, float(trainer.current_epoch)
        for k in module._members():
            metrics = {"train/loss_epoch": loss[k], "train/acc": acc[k], "epoch": epoch}
            self.records.ahead(k, {**metrics, "epoch_time_s": module.timer.elapsed}, step)
