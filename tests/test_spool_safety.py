"""No spool runs code: a spooled model is rebuilt from JSON arguments and weights read with
`weights_only=True`, so a spool whose model file is a malicious pickle, or whose record names
some other class, is refused by `scripts/runs.py sync`, and the run is left as it was."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import ROOT, _empty_store_db
from mlflow.tracking import MlflowClient

from pipeline.tracking.records import MODEL_NAME, SPOOL_NAME
from pipeline.tracking.tags import CHECKPOINT_DIR_TAG


class Payload:
    """Unpickling this creates the file `marker`: code run by the loader."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def a_spooled_model(tmp_path: Path, build: dict) -> tuple[str, str, Path]:
    """A store with a FINISHED run, and an output folder whose spool holds a model for it whose
    weights file is a pickle that creates `marker` when loaded without weights_only."""
    store = tmp_path / "mlruns"
    store.mkdir()
    shutil.copy(_empty_store_db(), store / "mlflow.db")
    uri = f"sqlite:///{store}/mlflow.db"
    client = MlflowClient(uri)
    experiment = client.create_experiment("e", (store / "artifacts").as_uri())
    out = tmp_path / "out"
    tags = {CHECKPOINT_DIR_TAG: str(out / "checkpoints")}  # the folder's own run
    run_id = client.create_run(experiment, tags=tags).info.run_id
    client.set_terminated(run_id, "FINISHED")
    out.mkdir()
    marker = tmp_path / "pwned"
    model = out / MODEL_NAME
    torch.save({"state_dict": Payload(marker), "example": torch.zeros(1, 784)}, model)
    record = {"op": "model", "run_id": run_id, "uri": uri, "path": str(model), "build": build}
    (out / SPOOL_NAME).write_text(json.dumps({**record, "seq": 1}) + "\n")
    return uri, run_id, marker


MLP = {"kind": "mlp", "args": {"input_size": 784, "hidden_sizes": [], "num_classes": 10}}


@pytest.mark.parametrize(
    "build",
    [
        {**MLP, "args": {**MLP["args"], "activation": "relu"}},  # a known net: the weights
        {"kind": "os.system", "args": {}},  # names code to run
        {"kind": "builtins.open", "args": {"file": "x"}},
    ],
    ids=["malicious weights", "another class", "a builtin"],
)
def test_sync_never_runs_a_spooled_pickle(build, tmp_path):
    uri, run_id, marker = a_spooled_model(tmp_path, build)
    before = MlflowClient(uri).get_run(run_id)
    synced = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "runs.py"), "sync", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert not marker.exists(), "the spool ran code"
    assert synced.returncode == 1, synced.stdout + synced.stderr
    assert "error: not sent: the model" in synced.stderr, synced.stderr
    assert "Traceback" not in synced.stderr
    after = MlflowClient(uri).get_run(run_id)
    assert (after.info.status, after.info.end_time) == (before.info.status, before.info.end_time)
    assert MlflowClient(uri).search_logged_models([before.info.experiment_id]) == []
