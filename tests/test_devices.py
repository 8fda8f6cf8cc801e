"""Devices: DDP on two CPU processes, where DDP is refused, GPU paths, threads, and that the
epoch metrics (synchronised across ranks under DDP) match an independent evaluation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import make_cfg, run_cli, run_in_process, runs_in, store_overrides
from hydra.utils import instantiate
from mlflow.tracking import MlflowClient

from pipeline.errors import ConfigError
from pipeline.model.classifier import Classifier
from pipeline.training.run import train

QUICK = [
    "data.source=embedded",
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=5",
    "trainer.log_every_n_steps=2",
    "tracking.log_model=false",
]
no_cuda = not torch.cuda.is_available()


def evaluate(checkpoint: str, cfg, split: str, bf16: bool = False) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) of a checkpoint over a whole split, computed here."""
    model = Classifier.load_from_checkpoint(checkpoint, map_location="cpu").eval()
    datamodule = instantiate(cfg.data, seed=cfg.seed)
    datamodule.load()
    x, y = datamodule.tensors[split]
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        logits = model(x)
        loss = F.cross_entropy(logits, y)  # autocast computes it in float32
    return (logits.argmax(1) == y).float().mean().item(), loss.item()


def assert_metrics_match_evaluation(cfg, client: MlflowClient, run, bf16: bool = False) -> None:
    """val/* and test/* of a one-epoch run = its only (best) checkpoint on the whole split."""
    run_id = run.info.run_id
    name = next(a.path for a in client.list_artifacts(run_id, "checkpoints") if "best-" in a.path)
    best = client.download_artifacts(run_id, name)
    for split in ("val", "test"):
        accuracy, loss = evaluate(best, cfg, split, bf16)
        assert run.data.metrics[f"{split}/acc"] == pytest.approx(accuracy, abs=1e-6)
        assert run.data.metrics[f"{split}/loss"] == pytest.approx(loss, rel=1e-4)


@pytest.mark.slow
def test_single_process_metrics_and_batch_size(tmp_path):
    cfg = make_cfg(tmp_path, *QUICK)
    result = train(cfg)
    client = MlflowClient(cfg.tracking.uri)
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    # train/loss every log_every_n_steps=2 optimizer steps of the 5, at Lightning's step index
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")] == [1, 3]
    assert_metrics_match_evaluation(cfg, client, run)
    tags = run.data.tags
    assert (tags["batch_size.per_device"], tags["batch_size.global"]) == ("64", "64")
    assert torch.get_num_threads() == 1  # torch_threads: 1 by default


@pytest.mark.slow
def test_bf16_mixed_precision_on_the_cpu(tmp_path):
    """The mixed-precision path of trainer=gpu (autocast, bf16 logits), run on the CPU: its
    metrics are the best checkpoint's under the same autocast."""
    cfg = make_cfg(tmp_path, "trainer.precision=bf16-mixed", *QUICK)
    result = train(cfg)
    client = MlflowClient(cfg.tracking.uri)
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["precision"] == "bf16-mixed"
    assert_metrics_match_evaluation(cfg, client, run, bf16=True)
    best = client.download_artifacts(run.info.run_id, "checkpoints/best-epoch=0.ckpt")
    for split in ("val", "test"):  # recorded under autocast: far nearer bf16 than float32
        recorded = run.data.metrics[f"{split}/loss"]
        _, mixed = evaluate(best, cfg, split, bf16=True)
        _, full = evaluate(best, cfg, split, bf16=False)
        assert abs(recorded - mixed) < abs(recorded - full) / 10, split


@pytest.mark.slow
def test_ddp_two_cpu_processes_make_one_finished_run(tmp_path):
    store = tmp_path / "mlruns"
    done = run_cli(
        "trainer=ddp",
        *QUICK,
        *store_overrides(store),
        f"hydra.run.dir={tmp_path / 'out'}",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    # rank 0 reports (the run's start and its result), rank 1 does not
    assert done.stdout.count("MLflow run ") == 2
    assert done.stdout.count(" started") == 1 and done.stdout.count(": test/acc") == 1
    runs = runs_in(store)
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED"
    tags = run.data.tags
    assert (tags["devices"], tags["world_size"]) == ("2", "2")
    assert (tags["batch_size.per_device"], tags["batch_size.global"]) == ("64", "128")
    client = MlflowClient(f"sqlite:///{store}/mlflow.db")
    # metrics logged once (rank 0): one point per logging step / epoch, not one per rank
    for key, points in {"train/loss": 2, "val/acc": 1, "val/loss": 1, "test/acc": 1}.items():
        assert len(client.get_metric_history(run.info.run_id, key)) == points, key
    # each rank saw half of the val and test sets: the logged values are of the whole sets
    cfg = make_cfg(tmp_path, *QUICK)
    assert_metrics_match_evaluation(cfg, client, run)
    # test_correct.npy: both ranks' halves gathered back into the test split's order
    run_id = run.info.run_id
    correct = np.load(client.download_artifacts(run_id, "test_correct.npy"))
    name = next(a.path for a in client.list_artifacts(run_id, "checkpoints") if "best-" in a.path)
    model = Classifier.load_from_checkpoint(client.download_artifacts(run_id, name)).eval()
    datamodule = instantiate(cfg.data, seed=cfg.seed)
    datamodule.load()
    x, y = datamodule.tensors["test"]
    with torch.no_grad():
        assert np.array_equal(correct, (model(x).argmax(1) == y).numpy())


@pytest.mark.slow
def test_ddp_inside_a_multirun_fails_with_advice(tmp_path, capsys):
    store = tmp_path / "mlruns"
    status = run_in_process(
        "-m",
        "trainer=ddp",
        "seed=1,2",
        *QUICK,
        *store_overrides(store),
        f"hydra.sweep.dir={tmp_path / 'multi'}",
    )
    stderr = capsys.readouterr().err
    assert status != 0
    assert "trainer=ddp cannot run inside a Hydra multirun" in stderr
    assert "python train.py trainer=ddp" in stderr  # what to do instead
    assert runs_in(store) == []


def test_ddp_from_python_is_refused_before_any_run(tmp_path):
    with pytest.raises(ConfigError, match="re-running the command line"):
        train(make_cfg(tmp_path, "trainer=ddp", *QUICK))
    assert runs_in(tmp_path / "mlruns") == []


def test_bad_thread_count_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="torch_threads=0"):
        train(make_cfg(tmp_path, "torch_threads=0"))
    assert runs_in(tmp_path / "mlruns") == []


@pytest.mark.skipif(not no_cuda, reason="this machine has a GPU")
def test_gpu_without_cuda_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="no CUDA GPU is visible"):
        train(make_cfg(tmp_path, "trainer=gpu", *QUICK))
    assert runs_in(tmp_path / "mlruns") == []


@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.skipif(no_cuda, reason="needs a CUDA GPU")
@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_gpu_run(tmp_path, precision):
    cfg = make_cfg(tmp_path, "trainer=gpu", f"trainer.precision={precision}", *QUICK)
    result = train(cfg)
    client = MlflowClient(cfg.tracking.uri)
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert (run.data.tags["accelerator"], run.data.tags["precision"]) == ("cuda", precision)
    assert 0.0 <= run.data.metrics["test/acc"] <= 1.0
