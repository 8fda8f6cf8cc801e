"""The exit statuses of every command, in one place."""

from __future__ import annotations

import signal
from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    ERROR = 1  # an unexpected error (its traceback is shown); Hydra's own usage errors;
    # a full disk (one `error:` line; a run it hit is FAILED)
    BAD_INPUT = 2  # a value, file or store that cannot work: one `error:` line, nothing created
    DIVERGED = 3  # the training loss diverged: the run is FAILED with tag diverged=true
    # Trained, but the MLflow store did not take the whole record (server down, store locked):
    # the rest, the final status included, is in the spool: `python scripts/runs.py sync <dir>`.
    TRACKING_INCOMPLETE = 4
    SIGINT = 128 + signal.SIGINT  # stopped by Ctrl-C: the run is KILLED, with a checkpoint
    SIGTERM = 128 + signal.SIGTERM  # stopped by SIGTERM (e.g. a scheduler): as for Ctrl-C

    @classmethod
    def for_signal(cls, signum: int) -> ExitCode:
        """What a shell reports for a process ended by the signal."""
        return cls(128 + signum)

    @classmethod
    def stopped_by_signal(cls, code: object) -> bool:
        return code in (cls.SIGINT, cls.SIGTERM)
