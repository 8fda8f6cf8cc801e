"""What a run records besides its metrics, once trained: checkpoints, per-sample test
correctness, the curves figure and the model. Everything is queued on the run's writer, which
sends it (or keeps it in the spool)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig
from pytorch_lightning.utilities import rank_zero_only

from pipeline.model.classifier import Classifier
from pipeline.tracking.figures import plot_run
from pipeline.tracking.writer import Writer


@rank_zero_only
def checkpoint(writer: Writer, path: Path) -> None:
    if path.is_file():
        writer.log_artifact(path, "checkpoints")


def artifacts(
    cfg: DictConfig,
    writer: Writer,
    *,
    title: str,
    checkpoints: set[str],
    history: dict[str, list[tuple[int, float]]],
    model: Classifier,
    example: torch.Tensor,
    workdir: Path,
) -> None:
    """Checkpoints, per-sample test correctness, the curves as a PNG under `title`
    (tracking.log_curves), and the best model via mlflow.pytorch with an input `example`
    (tracking.log_model); all queued: the writer sends them."""
    for path in checkpoints:
        writer.log_artifact(path, "checkpoints")
    if cfg.tracking.get("log_curves", True):
        every = cfg.trainer.log_every_n_steps
        figure = plot_run(history, workdir / "curves.png", title=title, every=every)
        writer.log_artifact(figure)
    if model.test_correct is not None:  # the best checkpoint's, in test order (paired tests)
        np.save(workdir / "test_correct.npy", model.test_correct.numpy())
        writer.log_artifact(workdir / "test_correct.npy")
    if cfg.tracking.log_model:
        writer.log_model(model.net, example)
