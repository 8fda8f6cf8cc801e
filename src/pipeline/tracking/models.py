"""The trained network as an MLflow model (`mlflow.pytorch`), with its signature."""

from __future__ import annotations

import os

import mlflow
import torch
from mlflow.tracking import MlflowClient


def log_model(uri: str, run_id: str, net: torch.nn.Module, example: torch.Tensor) -> None:
    """`mlflow.pytorch.log_model` with an input example, so the signature is recorded.

    MLflow's fluent API needs the global tracking URI, and setting it also sets
    MLFLOW_TRACKING_URI, which decides the store of every later config in this process
    (conf/tracking/mlflow.yaml): both are put back as they were.
    """
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
