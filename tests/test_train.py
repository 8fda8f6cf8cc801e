"""A real short training run through `train`, read back from MLflow."""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
import yaml
from conftest import make_cfg, runs_in
from hydra.utils import instantiate
from mlflow.tracking import MlflowClient

from pipeline.model.classifier import Classifier
from pipeline.training.run import train

pytestmark = pytest.mark.slow

EPOCHS = 2


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """One 2-epoch Adam run on the embedded digits; shared by the read-back tests below."""
    tmp = tmp_path_factory.mktemp("run")
    cfg = make_cfg(tmp, "optimizer=adam", f"trainer.max_epochs={EPOCHS}", "seed=7")
    result = train(cfg)
    client = MlflowClient(cfg.tracking.uri)
    mlflow.set_tracking_uri(cfg.tracking.uri)
    return cfg, result, client, client.get_run(result.run_id), tmp


def test_run_finished_with_name_and_params(finished):
    cfg, result, _, run, tmp = finished
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "adam lr=0.001 seed=7"
    params = run.data.params
    assert params["optimizer.lr"] == "0.001"
    assert params["optimizer.class"] == "torch.optim.adam.Adam"
    assert params["optimizer.betas"] == "[0.9, 0.999]"
    assert params["model.hidden_sizes"] == "[200]"
    assert params["data.batch_size"] == "64"
    assert params["trainer.max_epochs"] == str(EPOCHS)
    assert params["seed"] == "7"
    assert len(runs_in(tmp / "mlruns")) == 1


def test_metric_histories(finished):
    cfg, result, client, run, _ = finished
    run_id = run.info.run_id

    def history(key):
        return [m.value for m in client.get_metric_history(run_id, key)]

    n_train = int(run.data.tags["data.train_size"])
    steps_per_epoch = -(-n_train // 64)
    every = cfg.trainer.log_every_n_steps
    assert len(history("train/loss")) == (steps_per_epoch * EPOCHS) // every
    steps = [m.step for m in client.get_metric_history(run_id, "train/loss")]
    assert steps == sorted(steps) and len(set(steps)) == len(steps)
    for key in ("train/loss_epoch", "train/acc", "val/loss", "val/acc", "epoch_time_s"):
        values = history(key)
        assert len(values) == EPOCHS, key
        assert all(np.isfinite(values)), key
    assert all(0 < t < 120 for t in history("epoch_time_s"))
    assert history("train/loss_epoch")[-1] < history("train/loss_epoch")[0]
    assert len(history("test/acc")) == 1 and len(history("test/loss")) == 1
    assert 0.1 < history("test/acc")[0] <= 1
    assert result.metrics["test/acc"] == history("test/acc")[0]


def test_tags(finished):
    _, _, _, run, _ = finished
    tags = run.data.tags
    assert tags["optimizer"] == "adam"
    assert tags["optimizer.impl"] == "torch"
    assert tags["data.source_used"] == "embedded"
    sizes = [int(tags[f"data.{s}_size"]) for s in ("train", "val", "test")]
    assert sum(sizes) == 5000 and sizes[2] == 1000
    assert tags["accelerator"] == "cpu" and tags["devices"] == "1"
    assert len(tags["git.commit"]) in (40, len("unknown"))
    assert tags["git.dirty"] in ("true", "false")
    assert tags["version.torch"] == torch.__version__
    assert tags["version.mlflow"] == mlflow.__version__
    assert "version.lightning" in tags


def test_artifacts(finished):
    cfg, _, client, run, _ = finished
    run_id = run.info.run_id
    top = {a.path for a in client.list_artifacts(run_id)}
    assert {"config.yaml", "overrides.yaml", "checkpoints", "curves.png"} <= top
    config = yaml.safe_load(Path(client.download_artifacts(run_id, "config.yaml")).read_text())
    assert config["optimizer"]["lr"] == 0.001 and config["optimizer"]["name"] == "adam"
    checkpoints = {Path(a.path).name for a in client.list_artifacts(run_id, "checkpoints")}
    assert "last.ckpt" in checkpoints and any(c.startswith("best-") for c in checkpoints)
    png = Path(client.download_artifacts(run_id, "curves.png")).read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000


def test_test_correct_is_the_best_checkpoints_per_sample_correctness(finished):
    """test_correct.npy: one bool per test sample, in test order, of the model test/acc scored."""
    cfg, result, client, run, _ = finished
    run_id = run.info.run_id
    correct = np.load(client.download_artifacts(run_id, "test_correct.npy"))
    assert correct.dtype == bool and correct.shape == (1000,)
    assert correct.mean() == pytest.approx(result.metrics["test/acc"], abs=1e-6)
    best = next(a.path for a in client.list_artifacts(run_id, "checkpoints") if "best-" in a.path)
    classifier = Classifier.load_from_checkpoint(client.download_artifacts(run_id, best))
    datamodule = instantiate(cfg.data, seed=cfg.seed)
    datamodule.load()
    x, y = datamodule.tensors["test"]
    with torch.no_grad():
        assert np.array_equal(correct, (classifier.net.eval()(x).argmax(-1) == y).numpy())


def test_logged_model_predicts_like_the_best_checkpoint(finished):
    _, _, client, run, _ = finished
    run_id = run.info.run_id
    best = next(a.path for a in client.list_artifacts(run_id, "checkpoints") if "best-" in a.path)
    classifier = Classifier.load_from_checkpoint(client.download_artifacts(run_id, best))
    loaded = mlflow.pytorch.load_model(f"runs:/{run_id}/model")
    x = torch.randn(32, 784)
    with torch.no_grad():
        assert torch.equal(loaded(x), classifier.net.eval()(x))
    # MLflow 3 stores the model as a LoggedModel linked to the run (not under its artifacts).
    [logged] = mlflow.search_logged_models(
        experiment_ids=[run.info.experiment_id],
        filter_string=f"source_run_id = '{run_id}'",
        output_format="list",
    )
    assert logged.name == "model"
    model_info = mlflow.models.get_model_info(f"runs:/{run_id}/model")
    assert model_info.signature is not None
    assert model_info.signature.inputs.to_dict()[0]["tensor-spec"]["shape"] == (-1, 784)


def test_learning_happens(finished):
    """Adam, 2 epochs on 3,600 training digits: far above chance (0.1). Measured ~0.89."""
    _, result, _, _, _ = finished
    assert result.metrics["val/acc"] > 0.85


def test_same_seed_same_metrics_whatever_the_grouping(tmp_path):
    """Lightning gets groups of minibatches (data.Groups): 1 per group is the classic loop, 10
    leaves a partial group (25 = 10 + 10 + 5), 128 puts each epoch in one. Same seed: the same
    recorded run, in every value and step."""
    recorded = {}
    for per_group in (1, 10, 128):
        cfg = make_cfg(
            tmp_path / str(per_group),
            "optimizer=momentum",
            "trainer.max_epochs=2",
            "trainer.limit_train_batches=25",  # minibatches, whatever the grouping
            "trainer.log_every_n_steps=4",
            "tracking.log_model=false",
            "seed=3",
            f"data.samples_per_group={64 * per_group}",
        )
        result = train(cfg)
        client = MlflowClient(cfg.tracking.uri)
        recorded[per_group] = {
            key: [(m.step, m.value) for m in client.get_metric_history(result.run_id, key)]
            for key in ("train/loss", "train/loss_epoch", "val/loss", "val/acc", "test/acc")
        }
        ckpt = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
        assert torch.load(ckpt, weights_only=False)["global_step"] == 50  # optimizer steps
    first = recorded[1]
    assert [step for step, _ in first["train/loss"]] == list(range(3, 50, 4))
    assert [step for step, _ in first["val/acc"]] == [24, 49]  # each epoch's last step
    assert recorded[10] == first and recorded[128] == first


def test_training_error_marks_run_failed(tmp_path, monkeypatch):
    cfg = make_cfg(tmp_path, "trainer.max_epochs=1", "tracking.log_model=false")

    def explode(self, batch, batch_idx):
        raise RuntimeError("injected failure")

    monkeypatch.setattr(Classifier, "training_step", explode)
    with pytest.raises(RuntimeError, match="injected failure"):
        train(cfg)
    [run] = runs_in(tmp_path / "mlruns")
    assert run.info.status == "FAILED"
    client = MlflowClient(cfg.tracking.uri)
    text = Path(client.download_artifacts(run.info.run_id, "traceback.txt")).read_text()
    assert "injected failure" in text


def test_logging_the_model_leaves_where_later_runs_go_unchanged(tmp_path, monkeypatch):
    """MLflow's log_model sets MLFLOW_TRACKING_URI, which decides the default store of every
    later config in the process (a sweep's next job): it is put back as it was."""
    import os

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    train(make_cfg(tmp_path, "trainer.max_epochs=1", "trainer.limit_train_batches=2"))
    assert "MLFLOW_TRACKING_URI" not in os.environ
