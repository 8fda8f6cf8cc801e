"""An MLflow run's status, as the pipeline writes and reads it (MLflow's own names)."""

from __future__ import annotations

from enum import StrEnum


class Status(StrEnum):
    RUNNING = "RUNNING"
    FINISHED = "FINISHED"
    FAILED = "FAILED"
    KILLED = "KILLED"
