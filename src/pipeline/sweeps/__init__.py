"""Sweeps: one parent MLflow run per Hydra multirun, its children, and the comparison report."""
