"""`trainer.precision=64-true`: a single run trains in float64 end to end."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import ONE_EPOCH, make_cfg
from mlflow.tracking import MlflowClient

from pipeline.training.run import train

pytestmark = pytest.mark.slow


def test_float64_run_trains_and_records(tmp_path):
    cfg = make_cfg(
        tmp_path, *ONE_EPOCH, "trainer.precision=64-true", "tracking.log_model=false", "seed=3"
    )
    result = train(cfg)
    client = MlflowClient(cfg.tracking.uri)
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["precision"] == "64-true"
    assert {"train/loss_epoch", "val/acc", "test/acc"} <= set(run.data.metrics)
    ckpt = torch.load(Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt", weights_only=True)
    assert {w.dtype for w in ckpt["state_dict"].values()} == {torch.float64}
    # The same run in float32 records nearly the same first loss: the same data, the same start.
    cfg32 = make_cfg(tmp_path / "f32", *ONE_EPOCH, "tracking.log_model=false", "seed=3")
    loss32 = train(cfg32).history["train/loss_epoch"][0][1]
    loss64 = result.history["train/loss_epoch"][0][1]
    assert loss64 != loss32 and loss64 == pytest.approx(loss32, rel=1e-4)
