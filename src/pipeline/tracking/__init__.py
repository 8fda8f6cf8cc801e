"""MLflow: a run's lifecycle, its params, the metrics logger, the store, stale runs, the server."""
