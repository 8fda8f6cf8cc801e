"""What a command's console shows: its own lines and every warning; the rest goes to the log file.

Third-party libraries announce their choices at INFO on every start (Lightning: "GPU available:
False"; Hydra: its launches). They stay in the job's log file (conf/hydra/job_logging); the console
gets them with `hydra.verbose=true`, which sets the root logger to DEBUG.
"""

from __future__ import annotations

import logging
import os


class QuietConsole(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return (
            record.levelno >= logging.WARNING
            or record.name.split(".")[0] == "pipeline"
            or logging.getLogger().level <= logging.DEBUG
        )


def quiet_libraries() -> None:
    """Before MLflow loads: it sets up its own console logger at the level this variable names
    (its INFO lines announce store upkeep and environment detection on every run), and its usage
    telemetry would try to reach the internet; a resume's download of the old config and
    checkpoint would draw progress bars. The user's own settings win."""
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
