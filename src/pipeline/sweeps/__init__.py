"""Sweeps: one parent MLflow run per Hydra multirun, its children, and the comparison report;
search/ is the Optuna search, protocol/ the fair comparison built on it."""
