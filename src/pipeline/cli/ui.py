"""`make ui`'s first line: where the training runs are in the MLflow UI it starts.

MLflow 3's UI opens an experiment on its GenAI "Overview" (traces: none here); the runs are on
the experiment's *Training runs* tab, `#/experiments/<id>/runs`. The store is only read: a store
or experiment that does not exist yet gives the UI's address, and nothing is created.

    python -m pipeline.cli.ui --store sqlite:////abs/mlruns/mlflow.db --port 5000
"""

from __future__ import annotations

import argparse
from pathlib import Path
from urllib.parse import urlsplit

from pipeline import PROJECT_ROOT

EXPERIMENT = "mnist-optimizers"  # conf/tracking/mlflow.yaml's tracking.experiment


def runs_url(store: str, base: str, experiment: str = EXPERIMENT) -> str:
    """The Training runs view of `experiment` in the UI at `base`; `base` alone when the store
    (a sqlite file) or the experiment is not there yet."""
    database = Path(urlsplit(store).path) if store.startswith("sqlite:///") else None
    if database is None or not database.is_file():
        return base
    from mlflow.tracking import MlflowClient

    found = MlflowClient(store).get_experiment_by_name(experiment)
    return f"{base}/#/experiments/{found.experiment_id}/runs" if found else base


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", default=f"sqlite:///{PROJECT_ROOT}/mlruns/mlflow.db")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5000)
    parser.add_argument("--experiment", default=EXPERIMENT)
    args = parser.parse_args()
    base = f"http://{args.host}:{args.port}"
    url = runs_url(args.store, base, args.experiment)
    where = f"training runs of {args.experiment}" if url != base else "no runs recorded yet"
    print(f"MLflow UI: {url}   ({where}; Ctrl-C stops it)", flush=True)


if __name__ == "__main__":
    main()
