"""What a sweep no longer pays per job: data loaded once per process. The cut keeps what is
recorded; `train.py` still exits with everything written."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from benchmarks.loops import synthetic, write_mnist_layout
from conftest import ROOT, make_cfg, store_overrides
from mlflow.tracking import MlflowClient

import pipeline.data.sources
from pipeline.data import cache as datacache
from pipeline.data.datamodule import MNISTDataModule
from pipeline.training.run import train

CURVES = ("train/loss", "train/acc", "val/loss", "val/acc", "test/acc", "test/loss")


def local_cfg(tmp_path: Path, data_root: Path, *overrides: str):
    return make_cfg(
        tmp_path,
        "data.source=local",
        f"data.root={data_root}",
        "data.batch_size=50",
        "trainer.max_epochs=2",
        "trainer.log_every_n_steps=2",
        "tracking.log_model=false",
        *overrides,
    )


def curves(cfg, run_id: str) -> dict[str, list[tuple[int, float]]]:
    client = MlflowClient(cfg.tracking.uri)
    return {
        key: [(m.step, m.value) for m in client.get_metric_history(run_id, key)] for key in CURVES
    }


@pytest.mark.slow
def test_jobs_in_one_process_read_the_data_once_and_record_the_same(tmp_path, monkeypatch):
    data_root = tmp_path / "data"
    write_mnist_layout(data_root, synthetic(600, 100, seed=1))
    reads = []
    read_idx = pipeline.data.sources.read_idx
    monkeypatch.setattr(
        pipeline.data.sources, "read_idx", lambda path: reads.append(path) or read_idx(path)
    )
    datacache.clear()
    cfg_a, cfg_b, cfg_c = (local_cfg(tmp_path / job, data_root) for job in "abc")

    first = train(cfg_a)
    assert len(reads) == 4  # images and labels, train and test
    second = train(cfg_b)
    assert len(reads) == 4  # the second job of the process reused the tensors...
    # ...and trained on exactly what the first one loaded: the same run, point for point
    # (training never wrote into the shared tensors).
    a, b = curves(cfg_a, first.run_id), curves(cfg_b, second.run_id)
    assert all(a[key] for key in CURVES) and a == b

    # New files under the same root (another dataset, another size) are read again.
    write_mnist_layout(data_root, synthetic(700, 120, seed=2))
    third = train(cfg_c)
    assert len(reads) == 8
    tags = MlflowClient(cfg_c.tracking.uri).get_run(third.run_id).data.tags
    assert tags["data.test_size"] == "120"
    assert int(tags["data.train_size"]) + int(tags["data.val_size"]) == 700
    datacache.clear()


@pytest.mark.slow
def test_train_py_exits_with_everything_written(tmp_path):
    """`python train.py` as a user runs it: exit status, its last lines, Hydra's log file, the
    run FINISHED (bad input's exit status: test_cli.py, also a real process)."""
    store, out = tmp_path / "mlruns", tmp_path / "out"
    common = [*store_overrides(store), "data.source=embedded", f"hydra.run.dir={out}"]
    quick = ["trainer.max_epochs=1", "trainer.limit_train_batches=3", "tracking.log_model=false"]
    done = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *common, *quick],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    # It prints its start, one line per epoch off a terminal, its result: nothing else.
    started, epoch, result, see = done.stdout.rstrip().splitlines()
    assert started.startswith("MLflow run ") and "started: mnist (embedded: " in started
    assert started.endswith("1 x cpu") and epoch.startswith("epoch 1/1  train/loss_epoch ")
    assert result.startswith("MLflow run ") and ": test/acc 0." in result
    assert see.startswith("See it: make ui")
    assert done.stderr == ""  # Lightning's, MLflow's and Hydra's notes are in the log file
    assert "Restoring states from the checkpoint" in (out / "train.log").read_text()
    client = MlflowClient(f"sqlite:///{store}/mlflow.db")
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert run.info.status == "FINISHED" and "test/acc" in run.data.metrics


def test_cache_key_changes_with_what_loading_depends_on(tmp_path):
    write_mnist_layout(tmp_path, synthetic(20, 10))

    def key(**settings):
        return MNISTDataModule(root=str(tmp_path), source="local", **settings).cache_key()

    assert key() == key(seed=5, batch_size=7)  # not part of loading: one copy for a sweep
    assert key() != key(val_size=0.2) and key() != key(split_seed=1) and key() != key(std=1.0)
    before = key()
    write_mnist_layout(tmp_path, synthetic(30, 10))  # replaced files
    assert key() != before
