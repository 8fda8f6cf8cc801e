"""A finished single run's process ends without the interpreter's teardown (pipeline.cli.leave),
having done what a normal exit does for it: atexit handlers, flushed streams, the exit status."""

from __future__ import annotations

import subprocess
import sys

import pytest

SCRIPT = """
import atexit, sys, threading
from pathlib import Path
from pipeline.cli import leave

folder = Path(sys.argv[1])
class Torn:  # its __del__ runs only in the interpreter's teardown
    def __del__(self):
        (folder / "teardown").write_text("ran")
kept = Torn()
atexit.register(lambda: (folder / "atexit").write_text("ran"))
sys.stdout.write("last line, still buffered")
leave.single_run = sys.argv[2] == "single"
if sys.argv[3] == "thread":
    threading.Thread(target=threading.Event().wait, args=(0.5,)).start()
leave.leave(3)
sys.exit(4)  # the normal way out, where leave() declined
"""


@pytest.mark.parametrize(
    ("mode", "thread", "status", "teardown"),
    [
        ("single", "none", 3, False),  # taken: no teardown
        ("sweep", "none", 4, True),  # a sweep's process exits normally
        ("single", "thread", 4, True),  # so does one with a non-daemon thread running
    ],
)
def test_leave_skips_only_the_teardown(tmp_path, mode, thread, status, teardown):
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path), mode, thread],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == status, done.stderr
    assert done.stdout == "last line, still buffered"
    assert (tmp_path / "atexit").read_text() == "ran"
    assert (tmp_path / "teardown").exists() == teardown


def test_leave_never_ends_the_test_suite():
    from pipeline.cli import leave

    leave.single_run = True
    try:
        leave.leave(0)  # would end this process, were it not inside pytest
    finally:
        leave.single_run = False
