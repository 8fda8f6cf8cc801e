"""`python tests/fsize.py MODE LIMIT ARGS...`: `python train.py ARGS` on a disk that fills up.

The disk is full for real, as the kernel says it: RLIMIT_FSIZE (with SIGXFSZ ignored) makes
every write past LIMIT bytes of a file fail with EFBIG, as a full disk fails with ENOSPC. No
root, no mount. The soft limit is lowered and raised again by this process itself (up to its
hard limit, which stays as it was), so it can be full for some files only:

  from-start   every file, from the start: a file that grows past LIMIT (a checkpoint of a
               big model) fails, smaller ones (the sqlite store) do not
  artifacts    only the artifact root's writes (MLflow's local artifact store), from the start:
               its config.yaml at run creation already fails, the store's database does not
  end          only the artifact root's writes, once the run's artifacts are being recorded
               (LIMIT above the small ones, the figure, below the checkpoints and the model)
"""

from __future__ import annotations

import resource
import runpy
import signal
import sys
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_lock = threading.RLock()  # the writer thread and the main thread share the process's limit


def limit(size: int) -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (size, hard))


def unlimited() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))


def artifacts_full(size: int, armed: threading.Event) -> None:
    """Writes into the local artifact store fail past `size` bytes once `armed` is set."""
    from mlflow.store.artifact.local_artifact_repo import LocalArtifactRepository

    for name in ("log_artifact", "log_artifacts"):
        original = getattr(LocalArtifactRepository, name)

        def full(self, *args, _original=original, **kwargs):
            if not armed.is_set():
                return _original(self, *args, **kwargs)
            with _lock:
                limit(size)
                try:
                    return _original(self, *args, **kwargs)
                finally:
                    unlimited()

        setattr(LocalArtifactRepository, name, full)


def main() -> None:
    mode, size, args = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of a core dump
    armed = threading.Event()
    if mode == "from-start":
        limit(size)
    elif mode == "artifacts":
        armed.set()
        artifacts_full(size, armed)
    elif mode == "end":
        from pipeline.training import record as run

        artifacts_full(size, armed)
        record = run.artifacts

        def recording(*a, **kw):
            # The run's own files (its figure, the model's weights) are written here, by this
            # thread, while the writer thread copies artifacts: the limit is the process's, so
            # the writer's limited copies wait until these are written.
            with _lock:
                armed.set()
                return record(*a, **kw)

        run.artifacts = recording
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    sys.argv = [str(ROOT / "train.py"), *args]
    runpy.run_path(sys.argv[0], run_name="__main__")


if __name__ == "__main__":
    main()
