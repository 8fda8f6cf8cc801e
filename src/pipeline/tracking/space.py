"""A run that fails for want of disk space: make room for its status, then say it in one line.

A full disk stops a run in the middle of a write (a checkpoint, the model, an artifact, the
store's own database). What that write left is a cut file: useless (a checkpoint cut short
does not load) and holding exactly the space the store needs to write the run's status (sqlite
needs room for its rollback journal even to change one row). So before the status goes out,
`free_partial` removes the run's cut checkpoint files; then `explain` turns the error into one
`error:` line that says how the run ended in the store, for each of:

  the status reached the store     "MLflow run X marked FAILED: ...; free disk space ..."
  it did not, the journal has it   "... the store's disk is full too: it stays RUNNING there
                                     until ... python scripts/runs.py sync <dir>"
  neither took it                  "... python scripts/runs.py clean-stale marks it KILLED"
"""

from __future__ import annotations

import zipfile
from pathlib import Path

from pipeline.errors import DiskFull, disk_full, no_space
from pipeline.tracking.records import describe
from pipeline.tracking.writer import SYNC_HINT, Writer

FIX = "free disk space there (or point hydra.run.dir / tracking.artifact_root elsewhere)"


def complete(path: Path) -> bool:
    """A checkpoint written to its end: torch.save's zip format ends with the archive's
    directory, which a write cut short never reaches."""
    try:
        return zipfile.is_zipfile(path)
    except OSError:
        return False


def free_partial(folder: Path) -> list[Path]:
    """Remove the checkpoints under `folder` that a full disk cut short; returns them."""
    cut = [path for path in sorted(folder.glob("*.ckpt")) if not complete(path)]
    for path in cut:
        path.unlink(missing_ok=True)
    return cut


def explain(error: BaseException, run_id: str, writer: Writer | None) -> DiskFull | None:
    """`error` as the run's one disk-full line (None: not a full disk), once the run has ended
    and its writer is closed: the line says whether the store took the FAILED status."""
    if disk_full(error) is None:
        return None
    what = str(error)
    if not isinstance(error, DiskFull):
        what = f"no space left to write ({no_space(error)})"
    if writer is None or writer.status_sent():
        waiting = writer.left() if writer is not None else []
        rest = ""
        if waiting and writer.spool.broken is None:  # e.g. a checkpoint the store's disk refused
            rest = f"; then send the {describe(waiting)} its journal keeps: "
            rest += f"{SYNC_HINT} {writer.spool.path.parent}"
        return DiskFull(f"MLflow run {run_id} marked FAILED: {what}; {FIX} and run again{rest}")
    folder = writer.spool.path.parent
    if writer.spool.broken is None:
        how = f"free disk space there, then {SYNC_HINT} {folder} marks it FAILED"
    else:
        how = (
            f"its journal {writer.spool.path} could not keep every record either: free disk "
            f"space there, then python scripts/runs.py clean-stale --uri {writer.uri} marks it "
            "KILLED"
        )
    return DiskFull(
        f"MLflow run {run_id} failed: {what}, and the store's disk is full too: it stays "
        f"RUNNING in {writer.uri}; {how}"
    )
