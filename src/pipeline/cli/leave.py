"""The end of a training command's process, without the interpreter's teardown.

After a run's last line CPython spends ~2 s (more on a busy machine) tearing down: garbage-
collection passes over the ~720,000 objects torch, Lightning, MLflow and Hydra leave, then their
native destructors (docs/performance.md). Nothing of the run depends on it: the store has the
record, the files are closed. So a finished single run exits with `os._exit` once what a normal
exit would still do for it is done: the atexit handlers (logging's flush among them) and the
standard streams. `gc.freeze()` would skip the passes too, but leaves triton's nanobind objects
alive at teardown, which then report false leaks on stderr.

Not taken (the normal exit instead): inside another program (the test suite runs commands in its
own process), in a sweep (its launchers' worker machinery has its own shutdown), while a
non-daemon thread runs, or while a child process lives (DDP's other ranks), and where the
children cannot be listed (no Linux /proc).
"""

from __future__ import annotations

import atexit
import os
import sys
import threading
from pathlib import Path

single_run = False  # set by the task function: a plain run (Hydra's RUN mode), not a sweep


def leave(code: object) -> None:
    """Exit now with `code` (as sys.exit takes it) where that is safe; else return."""
    busy = [t for t in threading.enumerate() if t is not threading.main_thread() and not t.daemon]
    if not single_run or busy or "pytest" in sys.modules or has_children():
        return
    if code is not None and not isinstance(code, int):
        print(code, file=sys.stderr)  # as Python prints a SystemExit's message
        code = 1
    atexit._run_exitfuncs()  # what the interpreter runs first on a normal exit
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(code or 0)


def has_children() -> bool:
    """Whether this process has a child process (True where that cannot be told)."""
    try:
        tasks = list(Path("/proc/self/task").iterdir())
        return any((task / "children").read_text().strip() for task in tasks)
    except OSError:
        return True
