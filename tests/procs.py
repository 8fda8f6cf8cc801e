"""Training as real processes for the fault tests: start, wait for a line, signal, collect."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from conftest import ROOT, store_overrides

# Small and CPU-only; `tracking.log_model=false` skips the slowest artifact of a finished run.
QUICK = ["data.source=embedded", "tracking.log_model=false", "trainer.limit_val_batches=2"]


@dataclass
class Finished:
    returncode: int
    stdout: str
    stderr: str
    seconds_after_signal: float | None = None


def start(
    store: Path, *args: str, prefix: list[str] | None = None, quick: bool = True
) -> subprocess.Popen:
    """`python train.py ARGS` on `store`; stdout is a pipe (line by line), stderr a file."""
    err = open(store.parent / f"stderr-{time.monotonic_ns()}.txt", "w+")  # noqa: SIM115
    command = prefix or [sys.executable, str(ROOT / "train.py")]
    process = subprocess.Popen(
        [*command, *(QUICK if quick else []), *store_overrides(store), *args],
        cwd=ROOT,
        # One torch thread: on a busy 2-core machine OpenMP threads spin against each other and
        # make these tiny steps several times slower.
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        stdout=subprocess.PIPE,
        stderr=err,
        text=True,
    )
    process.err_file = err
    return process


def wait_for(process: subprocess.Popen, prefix: str) -> list[str]:
    """Read stdout until a line starts with `prefix` (the marker); returns the lines read."""
    lines = []
    for line in process.stdout:
        lines.append(line)
        if line.startswith(prefix):
            return lines
    raise AssertionError(f"exited ({process.wait()}) before printing {prefix!r}: {lines}")


def finish(process: subprocess.Popen, timeout: float = 120, since: float | None = None) -> Finished:
    stdout, _ = process.communicate(timeout=timeout)
    seconds = time.monotonic() - since if since is not None else None
    process.err_file.seek(0)
    stderr = process.err_file.read()
    process.err_file.close()
    return Finished(process.returncode, stdout, stderr, seconds)


def run_id_of(lines: list[str]) -> str:
    """The id from the 'MLflow run <id> started' line."""
    for line in lines:
        if line.startswith("MLflow run ") and " started" in line:
            return line.split()[2]
    raise AssertionError(f"no 'MLflow run <id> started' line in {lines}")
