"""Shared test helpers: configs composed like `train.py` does, pointed at a throwaway store."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, open_dict

import pipeline

ROOT = pipeline.PROJECT_ROOT
CONF = ROOT / "conf"

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


def store_overrides(store: Path) -> list[str]:
    return [
        f"tracking.uri=sqlite:///{store}/mlflow.db",
        f"tracking.artifact_root={store}/artifacts",
    ]


def make_cfg(tmp_path: Path, *overrides: str) -> DictConfig:
    """Compose conf/train.yaml with a private store, embedded data and a private output folder."""
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        cfg = compose(
            "train",
            overrides=[
                *store_overrides(tmp_path / "mlruns"),
                "data.source=embedded",
                *overrides,
            ],
        )
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path / "out")
    return cfg


def run_cli(*args: str, cwd: Path = ROOT, timeout: float = 900) -> subprocess.CompletedProcess:
    """`python train.py ARGS` as a user runs it."""
    return subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def runs_in(store: Path) -> list:
    """Every run of every experiment in the sqlite store under `store` (none if no store)."""
    if not (store / "mlflow.db").exists():
        return []
    client = MlflowClient(f"sqlite:///{store}/mlflow.db")
    ids = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(ids) if ids else []


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def cfg_factory(tmp_path):
    return lambda *overrides: make_cfg(tmp_path, *overrides)


@pytest.fixture
def one_torch_thread():
    """Small float64 maths runs ~10x slower with torch's second thread on a busy 2-core machine
    (the thread pool spins); tests that do a lot of it use one thread."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
