"""The trained network as an MLflow model (`mlflow.pytorch`), with its signature.

Logging the first model of a process costs seconds that are not the model's: MLflow 3 saves it
with `torch.export` (its first call imports much of torch's compiler stack) and checks the pinned
requirements against every installed distribution (cached after the first scan). `warm_up`
pays both on a background thread while the run trains, by saving a throwaway model of the same
input shape; `log_model` waits for it (two `torch.export` calls at once are not safe).
"""

from __future__ import annotations

import os
import tempfile
import threading

import mlflow
import torch
from mlflow.tracking import MlflowClient

_warming: threading.Thread | None = None


def warm_up(example: torch.Tensor) -> None:
    """Start saving a throwaway model like the one `log_model` will log, off the main thread."""
    global _warming
    if _warming is None:
        sample = (
            example[:2].detach().cpu().clone()
        )  # a batch of 2: the batch dimension stays dynamic
        _warming = threading.Thread(target=_save_throwaway, args=(sample,), name="model-warm-up")
        _warming.daemon = True  # never holds up an exit; log_model waits for it instead
        _warming.start()


def _save_throwaway(example: torch.Tensor) -> None:
    try:
        import mlflow.pytorch

        net = torch.nn.Linear(example.shape[-1], 2)
        with tempfile.TemporaryDirectory(prefix="pipeline-warm-up-") as folder:
            mlflow.pytorch.save_model(
                net.eval(),
                os.path.join(folder, "model"),
                input_example=example.numpy(),
                pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
            )
    except Exception:  # only a head start: the real log_model reports its own failures
        pass


def log_model(uri: str, run_id: str, net: torch.nn.Module, example: torch.Tensor) -> None:
    """`mlflow.pytorch.log_model` with an input example, so the signature is recorded.

    MLflow's fluent API needs the global tracking URI, and setting it also sets
    MLFLOW_TRACKING_URI, which decides the store of every later config in this process
    (conf/tracking/mlflow.yaml): both are put back as they were.
    """
    if _warming is not None:
        _warming.join()
    previous = mlflow.get_tracking_uri() if "MLFLOW_TRACKING_URI" in os.environ else None
    mlflow.set_tracking_uri(uri)
    torch_version = torch.__version__.split("+")[0]
    client = MlflowClient(uri)
    before = client.get_run(run_id).info
    try:
        with mlflow.start_run(run_id=run_id):
            mlflow.pytorch.log_model(
                net.cpu().eval(),
                name="model",
                input_example=example.cpu().numpy(),
                # Pinning the requirement skips MLflow's slow dependency inference (a subprocess).
                pip_requirements=[f"torch=={torch_version}"],
            )
    finally:
        # Leaving the fluent run marks it FINISHED; its status is its writer's to set (a model
        # sent by `sync` after the run ended FAILED must not turn it FINISHED).
        if before.status == "RUNNING":
            client.update_run(run_id, status="RUNNING")
        else:
            client.set_terminated(run_id, before.status, end_time=before.end_time)
        mlflow.set_tracking_uri(previous)
