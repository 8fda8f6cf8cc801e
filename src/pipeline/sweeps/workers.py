"""A sweep's processes: threads per parallel job, and how jobs stop with Ctrl-C, SIGTERM or a
dead parent."""

from __future__ import annotations

import os
import signal
import threading
import time

from pipeline.exit_codes import ExitCode


def effective_n_jobs(n_jobs: int | None, cores: int) -> int:
    """joblib's meaning of n_jobs: None -> 1, -1 -> all cores, -2 -> all but one, ..."""
    if n_jobs is None or n_jobs == 0:
        return 1
    return max(1, n_jobs if n_jobs > 0 else cores + 1 + n_jobs)


def threads_per_job(n_jobs: int | None, cores: int, batch: int | None = None) -> int:
    """Torch threads for each of the jobs that run at once: joblib's `n_jobs` of them, or fewer
    when the sweeper launches batches of `batch` jobs."""
    at_once = effective_n_jobs(n_jobs, cores)
    if batch is not None and batch > 0:
        at_once = min(at_once, batch)
    return max(1, cores // at_once)


def cpu_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def sigterm_as_interrupt() -> None:
    """SIGTERM raises KeyboardInterrupt like Ctrl-C in the sweep's process (main thread only),
    so that its parent run is ended KILLED between jobs too (inside a job, the training run's
    own handler takes over: pipeline.training.signals)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, signal.default_int_handler)


_watching_parent = False


def stop_with_parent(poll_s: float = 1.0, grace_s: float = 300.0) -> None:
    """In a joblib worker: once the sweep's process is gone (SIGKILL, the OOM killer), the worker
    stops its job as a SIGTERM would (KILLED, with a checkpoint), then exits, instead of training
    on for nobody. The worker's parent is the sweep's process; when it dies, the worker is
    re-parented. Its job's end cannot reach the dead parent (joblib's pipe), so the worker exits
    itself once its run is recorded (no training run open), or after `grace_s` at most."""
    global _watching_parent
    if _watching_parent:
        return
    _watching_parent = True
    parent = os.getppid()

    def watch() -> None:
        from pipeline.training.signals import SignalFlag

        while os.getppid() == parent:
            time.sleep(poll_s)
        os.kill(os.getpid(), signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while SignalFlag.entered and time.monotonic() < deadline:
            time.sleep(poll_s)
        os._exit(ExitCode.SIGTERM)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def is_interrupt(error: BaseException | None) -> bool:
    """A Ctrl-C/SIGTERM on its way out: KeyboardInterrupt, or the exit status a job gave it."""
    return isinstance(error, KeyboardInterrupt) or (
        isinstance(error, SystemExit) and ExitCode.stopped_by_signal(error.code)
    )
