"""Ending the `train.py` process without CPython's module teardown.

Once a run or a sweep is over, a normal interpreter exit spends seconds (~3-4 s on a 2-core
machine, every `python train.py`, single run or sweep) tearing down what torch, Lightning, MLflow
and Hydra left in memory: several garbage-collection passes over ~700,000 objects, then the
native libraries' destructors. Nothing that a run records depends on it: checkpoints, figures and
the MLflow store are written and closed by then. So `train.py` ends with the steps of a normal
exit that do matter, in CPython's order (non-daemon threads joined, with the callbacks that
`concurrent.futures` and joblib's workers register there; `atexit` handlers, among them
logging's flush and close and MLflow's; the standard streams flushed), then `os._exit` with the
same exit status Python would have given.

Only when train.py is the program itself: run from inside another one (the tests run it with
`runpy`), it returns or raises as usual.
"""

from __future__ import annotations

import atexit
import os
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn


def started_as(script: str | Path) -> bool:
    """Whether this process was started as `python [options] <script> <args>` with the same
    arguments that `sys.argv` holds now (not, e.g., run by runpy from pytest)."""
    argv, original = sys.argv, getattr(sys, "orig_argv", [])
    if not argv or len(original) < len(argv) or original[-len(argv) :] != argv:
        return False
    try:
        return Path(argv[0]).resolve() == Path(script).resolve()
    except OSError:
        return False


def exit_status(stop: SystemExit) -> int:
    """The status Python exits with for an uncaught SystemExit (a message: printed, then 1)."""
    if stop.code is None:
        return 0
    if isinstance(stop.code, int):
        return stop.code
    print(stop.code, file=sys.stderr)
    return 1


def exit_now(status: int) -> NoReturn:
    """A normal exit's steps up to the module teardown, then `os._exit(status)`."""
    threading._shutdown()  # what Py_Finalize does first: join non-daemon threads  # noqa: SLF001
    atexit._run_exitfuncs()  # noqa: SLF001
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # closed, or a broken pipe: nothing left to save
            pass
    os._exit(status)


def run_then_exit(main: Callable[[], object], script: str | Path) -> None:
    """Run `main`; if `script` is this process's program, exit without the teardown afterwards.

    Only a return or a SystemExit (Hydra's way out, also for errors) ends quickly; any other
    exception leaves as usual, with its traceback.
    """
    if not started_as(script):
        main()
        return
    try:
        main()
        status = 0
    except SystemExit as stop:
        status = exit_status(stop)
    exit_now(status)
