"""Every error a command explains to its user, and `explain`: the one map from an error to the
line printed and the exit status (pipeline.exit_codes).

A leaf: it imports nothing of the pipeline but the exit codes, so that any package may raise
these without importing another package. An error `explain` does not know is a bug: its
traceback is shown.
"""

from __future__ import annotations

import errno
import os
import signal
from pathlib import Path

from pipeline.exit_codes import ExitCode


class ConfigError(ValueError):
    """A config value is wrong; the message says which and how to fix it."""


class StoreError(ConfigError):
    """The MLflow store cannot be used as it is; the message says why and what to do."""


class UntrustedConfig(ConfigError):
    """A config read back from a store asks for code conf/ and the command line do not name
    (pipeline.config.stored): refused, the run left as it was."""


class DataError(ValueError):
    """The data cannot be loaded as configured; the message says what to do."""


class RunBusy(Exception):
    """Another live process writes this run; the message names it (exit 2, nothing touched)."""


class ServerError(RuntimeError):
    """PostgreSQL or the MLflow server cannot be set up; the message says what to do."""


class DiskFull(Exception):
    """A write of the run failed for want of disk space: the run ends FAILED, and the message
    (one `error:` line, exit 1) names what could not be written."""


class Diverged(RuntimeError):
    """The training loss became NaN or inf, or grew past the factor; going on is pointless.
    The run ends FAILED with the tag diverged=true (tracking.lifecycle), and the highest loss
    and the step it was caught at where known (a figure's cross)."""

    def __init__(self, message: str, loss: float = float("nan"), step: int | None = None) -> None:
        super().__init__(message)
        self.loss, self.step = loss, step


class Stopped(Exception):
    """Training was stopped by a signal; the run is KILLED, `checkpoint` the one to resume from."""

    def __init__(
        self,
        signum: int,
        run_id: str = "",
        checkpoint: str | None = None,
        trained_epochs: int | None = None,
    ) -> None:
        self.signum, self.run_id, self.checkpoint = signum, run_id, checkpoint
        self.trained_epochs = trained_epochs  # set when the stop came after training ended
        super().__init__(signal.Signals(signum).name)

    def message(self, in_sweep: bool = False) -> str:
        """What happened, and how to go on; `in_sweep`: the sweep's own last line says how
        (the same command again), not this job's."""
        name, run = signal.Signals(self.signum).name, self.run_id
        saved = f"checkpoint {Path(self.checkpoint).name}" if self.checkpoint else "no checkpoint"
        if in_sweep:
            return f"interrupted by {name}: MLflow run {run} marked KILLED, {saved} logged"
        if self.trained_epochs is None:
            return (
                f"interrupted by {name}: MLflow run {run} marked KILLED, {saved} logged; "
                f"continue it with: python train.py resume={run}"
            )
        # Every epoch was trained: a plain resume would have nothing left to do (it is refused).
        return (
            f"interrupted by {name} after training: MLflow run {run} marked KILLED (its test "
            f"metrics or artifacts may be missing), {saved} logged; train it on with: "
            f"python train.py resume={run} trainer.max_epochs={self.trained_epochs + 5}"
        )


# A full disk, a user over quota, or a file over the process's size limit (RLIMIT_FSIZE): waiting
# a few seconds does not help, so such a failure ends the run FAILED instead of being retried.
NO_SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
# ... and how it reads where the errno is lost: sqlite's SQLITE_FULL, torch's file writer (a
# short write to a full tmpfs: "[enforce fail at inline_container.cc:671] . unexpected pos
# 1024 vs 918", torch 2.15).
NO_SPACE_TEXTS = (
    "database or disk is full",
    "no space left on device",
    "disk quota exceeded",
    "file too large",
    "file write failed",
    "unexpected pos",
)


def no_space(error: BaseException | None) -> str | None:
    """What could not be written for want of space ('File too large: /x/last.ckpt'), from the
    error or its causes (torch and MLflow wrap the OSError); None for any other failure."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in NO_SPACE_ERRNOS:
            where = f": {error.filename}" if error.filename else ""
            return f"{error.strerror or os.strerror(error.errno)}{where}"
        text = str(error).strip()
        if any(known in text.lower() for known in NO_SPACE_TEXTS):
            return text.splitlines()[0][:200]
        error = error.__cause__ or error.__context__
    return None


def disk_full(error: BaseException, run_id: str | None = None) -> DiskFull | None:
    """`error` as a DiskFull, naming the run it failed where there is one (None: not a full
    disk)."""
    full = str(error) if isinstance(error, DiskFull) else no_space(error)
    if full is None:
        return None
    if not isinstance(error, DiskFull):
        full = f"no space left to write ({full})"
    if run_id is None:
        return (
            error
            if isinstance(error, DiskFull)
            else DiskFull(f"{full}; free disk space there and run again")
        )
    return DiskFull(
        f"MLflow run {run_id} marked FAILED: {full}; free disk space there (or point "
        "hydra.run.dir / tracking.artifact_root elsewhere) and run again"
    )


BAD_INPUT = (ConfigError, DataError, RunBusy, ServerError)


def explain(error: BaseException, in_sweep: bool = False) -> tuple[str, ExitCode] | None:
    """The one line a command prints for `error`, and the status it exits with; None for an
    error that is not the user's to fix (a bug: let its traceback show). `in_sweep`: a job of a
    sweep, whose own last line says how to go on."""
    if isinstance(error, Stopped):
        return error.message(in_sweep), ExitCode.for_signal(error.signum)
    if isinstance(error, BAD_INPUT):
        return f"error: {error}", ExitCode.BAD_INPUT
    if isinstance(error, Diverged):
        return f"error: {error}", ExitCode.DIVERGED
    if (full := disk_full(error)) is not None:
        return f"error: {full}", ExitCode.ERROR
    return None
