"""A population's checkpoint, and how the same sweep command resumes it mid-epoch.

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

Read back, the file is untrusted: `torch.load(weights_only=True)`, then its keys, K, run ids
and shapes are checked against the members before any run is touched (ConfigError).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytorch_lightning as pl
import torch
from mlflow.entities import Run
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig

from pipeline.errors import ConfigError, Stopped
from pipeline.population.records import MemberRecords
from pipeline.tracking import owners
from pipeline.tracking.replay import MANIFEST, POPULATION_TAG
from pipeline.tracking.status import Status
from pipeline.tracking.tags import CHECKPOINT_DIR_TAG
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


@dataclass
class Resume:
    """A checked population checkpoint: the member runs it continues, in member order."""

    path: Path
    population_id: str
    run_ids: list[str]


def read(path: Path) -> dict:
    """The checkpoint at `path`, loaded as data only (ConfigError: one line, nothing changed)."""
    where = f"population checkpoint {path}"
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        first = (str(error).strip() or type(error).__name__).splitlines()[0][:200]
        raise ConfigError(
            f"{where}: not a checkpoint this pipeline can read safely ({first}); "
            "delete it (and the KILLED member runs) to train afresh"
        ) from None
    meta = checkpoint.get(POPULATION_KEY) if isinstance(checkpoint, dict) else None
    ok = (
        isinstance(meta, dict)
        and {"state_dict", "loops", "optimizer_states"} <= set(checkpoint)
        and isinstance(meta.get("id"), str)
        and isinstance(meta.get("run_ids"), list)
        and all(isinstance(r, str) for r in meta["run_ids"])
        and isinstance(meta.get("state"), dict)
    )
    if not ok:
        raise ConfigError(
            f"{where}: not a population's checkpoint (no member runs, weights "
            "and loop state); delete it to train the jobs afresh"
        )
    return checkpoint


def check(checkpoint: dict, path: Path, module) -> None:
    """The checkpoint's weights and per-member state fit `module` (K, every shape)."""
    where = f"population checkpoint {path}"
    meta, k = checkpoint[POPULATION_KEY], module.net.size
    state = meta["state"]
    want = {name: tuple(t.shape) for name, t in module.state_dict().items()}
    have = {
        name: tuple(t.shape) if isinstance(t, torch.Tensor) else None
        for name, t in checkpoint["state_dict"].items()
    }
    problems = []
    if len(meta["run_ids"]) != k:
        problems.append(f"{len(meta['run_ids'])} member runs, not {k}")
    if have != want:
        bad = sorted(set(have) ^ set(want) | {n for n in have if have[n] != want.get(n)})
        problems.append(f"weights {', '.join(bad[:3])} do not fit {k} members")
    for name, shape in (("active", (k,)), ("best_acc", (k,))):
        value = state.get(name)
        if not isinstance(value, torch.Tensor) or tuple(value.shape) != shape:
            problems.append(f"{name} is not {k} values")
    best = state.get("best")
    params = [tuple(p.shape) for p in module.net.parameters()]
    if best is not None and [tuple(getattr(b, "shape", ())) for b in best] != params:
        problems.append("the best weights do not fit the members")
    sums = state.get("train_sums")
    if sums is not None and (not isinstance(sums, torch.Tensor) or tuple(sums.shape) != (3, k)):
        problems.append("the epoch's sums do not fit the members")
    if not isinstance(state.get("checked_at"), int):
        problems.append("no step count")
    if problems:
        raise ConfigError(
            f"{where}: {'; '.join(problems)}: it does not belong to this "
            "population; delete it to train the jobs afresh"
        )


def earlier_member(cfg: DictConfig) -> Run | None:
    """The sweep job's earlier run, if a population trained it (sweeps.jobs.find)."""
    from pipeline.sweeps import jobs
    from pipeline.sweeps.common import JOB_KEY_TAG, job_tags, parent_run_id

    parent = parent_run_id()
    if parent is None or cfg.get("resume") or cfg.get("ckpt_path"):
        return None
    run = jobs.find(MlflowClient(cfg.tracking.uri), parent, job_tags()[JOB_KEY_TAG])
    return run if run is not None and POPULATION_TAG in run.data.tags else None


def resumable(run: Run) -> Path | None:
    """The population checkpoint an interrupted member goes on from (KILLED, or RUNNING with
    a dead writer: SIGKILL), if it is still on this machine."""
    status, tags = run.info.status, run.data.tags
    if status not in (Status.KILLED, Status.RUNNING):
        return None
    if status == Status.RUNNING and owners.writer_state(tags) != "dead":
        return None
    folder = tags.get(CHECKPOINT_DIR_TAG)
    path = Path(folder) / CHECKPOINT_NAME if folder else None
    return path if path is not None and path.is_file() else None


def ended(client: MlflowClient, run_ids: list[str]) -> dict[int, Status]:
    """Members whose runs ended for good (FINISHED, FAILED: diverged): they stay as they are."""
    statuses = {k: client.get_run(r).info.status for k, r in enumerate(run_ids)}
    return {k: Status(s) for k, s in statuses.items() if s in (Status.FINISHED, Status.FAILED)}
