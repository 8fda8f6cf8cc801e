"""What pipeline.training.grouped relies on in Lightning's private state, held on its own.

grouped.py is the only module that touches Lightning's internals (its progress counters, the
restarting flag, a checkpoint's loop state). Each test names one thing it relies on and fails
when a Lightning release changes it; pyproject.toml caps pytorch-lightning at the newest minor
version these tests passed on.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers.logger import Logger

from pipeline.data.datamodule import MNISTDataModule
from pipeline.model.classifier import Classifier
from pipeline.training import grouped

BATCH, PER_GROUP, GROUPS = 50, 4, 3  # 3 groups of 4 minibatches: 12 optimizer steps an epoch
STEPS = PER_GROUP * GROUPS


class Recorder(Logger):
    """Keeps every (step, metric) Lightning logs."""

    def __init__(self) -> None:
        super().__init__()
        self.steps: dict[str, list[int]] = {}

    name, version = "recorder", "0"

    def log_hyperparams(self, *args, **kwargs) -> None:
        pass

    def log_metrics(self, metrics, step=None) -> None:
        for key in metrics:
            self.steps.setdefault(key, []).append(step)


class Probe(pl.Callback):
    """What grouped.py reads, where it reads it; optionally stops after `stop_after` groups."""

    def __init__(self, save_to: Path | None = None, stop_after: int | None = None) -> None:
        self.save_to, self.stop_after = save_to, stop_after
        self.done_at_batch_end: list[tuple[int, int]] = []
        self.global_steps: list[int] = []
        self.restarting_at_start: bool | None = None

    def on_train_start(self, trainer, pl_module) -> None:
        self.restarting_at_start = grouped.resuming_mid_epoch(trainer)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.done_at_batch_end.append((batch_idx, grouped.groups_done(trainer)))
        self.global_steps.append(trainer.global_step)
        if self.stop_after is not None and batch_idx + 1 == self.stop_after:
            trainer.save_checkpoint(self.save_to)
            raise KeyboardInterrupt


def fit(tmp_path: Path, epochs: int, probe: Probe, ckpt_path: str | None = None) -> Recorder:
    torch.manual_seed(0)
    data = MNISTDataModule(
        root=str(tmp_path),
        source="embedded",
        batch_size=BATCH,
        samples_per_group=BATCH * PER_GROUP,
        limit_batches={"train": STEPS, "val": 2, "test": 2},
    )
    model = Classifier(
        optimizer=lambda params: torch.optim.SGD(params, lr=0.01), step_each=grouped.step_each
    )
    logger = Recorder()
    trainer = pl.Trainer(
        max_epochs=epochs,
        logger=logger,
        callbacks=[probe, grouped.GroupedLoop()],
        log_every_n_steps=1,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        devices=1,
    )
    try:
        trainer.fit(model, datamodule=data, ckpt_path=ckpt_path)
    except SystemExit:  # Lightning's answer to a KeyboardInterrupt
        pass
    return logger


def test_counters_count_optimizer_steps(tmp_path):
    """`_count_steps` moves `optim_step_progress` and `_batches_that_stepped`: global_step and
    the logger's step axis then count minibatches, not Lightning's batches (groups)."""
    probe = Probe()
    logger = fit(tmp_path, epochs=2, probe=probe)
    assert probe.global_steps == [PER_GROUP * (i + 1) for i in range(2 * GROUPS)]
    assert logger.steps["train/loss"] == list(range(2 * STEPS))  # every step, each once
    assert logger.steps["val/acc"] == [STEPS - 1, 2 * STEPS - 1]  # at each epoch's last step


def test_batch_progress_counts_a_group_before_its_batch_end_hook(tmp_path):
    """`groups_done` reads `batch_progress.current.processed`: at a group's
    `on_train_batch_end` it already counts that group (a stop saved there skips it on resume)."""
    probe = Probe()
    fit(tmp_path, epochs=1, probe=probe)
    assert probe.done_at_batch_end == [(i, i + 1) for i in range(GROUPS)]


def test_restarting_flag_and_loop_state_of_a_mid_epoch_checkpoint(tmp_path):
    """A checkpoint saved after group 1 of epoch 0: its loop state says no epoch is done
    (`epochs_done`), the loader's `state_dict` rides in it, and the fit that resumes from it
    starts with the `restarting` flag set and trains only the epoch's remaining groups."""
    ckpt = tmp_path / "mid.ckpt"
    fresh = Probe(save_to=ckpt, stop_after=1)
    fit(tmp_path, epochs=1, probe=fresh)
    assert fresh.restarting_at_start is False
    checkpoint = torch.load(ckpt, weights_only=False)
    assert grouped.epochs_done(checkpoint) == 0
    loader_states = str(checkpoint["loops"]["fit_loop"]["state_dict"])
    assert "'groups_done': 1" in loader_states  # Groups.state_dict, as Lightning stored it
    resumed = Probe()
    fit(tmp_path, epochs=1, probe=resumed, ckpt_path=str(ckpt))
    assert resumed.restarting_at_start is True
    assert [i for i, _ in resumed.done_at_batch_end] == list(range(1, GROUPS))
    assert resumed.global_steps == [PER_GROUP * (i + 1) for i in range(1, GROUPS)]


def test_epochs_done_after_whole_epochs(tmp_path):
    ckpt = tmp_path / "end.ckpt"

    class SaveAtEnd(Probe):
        def on_train_end(self, trainer, pl_module) -> None:
            trainer.save_checkpoint(ckpt)

    fit(tmp_path, epochs=2, probe=SaveAtEnd())
    assert grouped.epochs_done(torch.load(ckpt, weights_only=False)) == 2


@pytest.mark.parametrize("missing", [{}, {"loops": {}}, {"loops": {"fit_loop": None}}])
def test_epochs_done_of_a_file_without_loop_state(missing):
    assert grouped.epochs_done(missing) is None
