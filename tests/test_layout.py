"""The package's shape: no import circle between its sub-packages, one leaf for errors, and
`errors.explain` as the one map from an error to a line and an exit status."""

from __future__ import annotations

import ast
import errno
import signal
from pathlib import Path

import pipeline
from pipeline import errors
from pipeline.exit_codes import ExitCode

PACKAGE = Path(pipeline.__file__).parent


def package_imports() -> dict[str, set[str]]:
    """Sub-package (or top module) -> the other sub-packages its modules import."""
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        here = path.relative_to(PACKAGE).parts[0].removesuffix(".py")
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            for name in names:
                parts = name.split(".")
                if parts[0] == "pipeline" and len(parts) > 1 and parts[1] != here:
                    if (PACKAGE / parts[1]).is_dir() or (PACKAGE / f"{parts[1]}.py").is_file():
                        graph.setdefault(here, set()).add(parts[1])
    return graph


def test_no_import_circle_between_sub_packages():
    graph = package_imports()
    seen: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> None:
        seen[node] = 1
        for nxt in sorted(graph.get(node, ())):
            assert seen.get(nxt) != 1, f"import circle: {' -> '.join([*path, node, nxt])}"
            if nxt not in seen:
                visit(nxt, [*path, node])
        seen[node] = 2

    for node in sorted(graph):
        if node not in seen:
            visit(node, [])
    assert graph["training"] >= {"data", "model", "tracking"}  # the graph was really read


def test_errors_and_exit_codes_are_leaves():
    graph = package_imports()
    assert graph.get("errors", set()) <= {"exit_codes"}
    assert not graph.get("exit_codes")


def test_every_user_error_has_one_line_and_its_exit_status():
    cases = {
        errors.ConfigError("optimizer.lr=-1 is not allowed"): ExitCode.BAD_INPUT,
        errors.StoreError("the store is damaged"): ExitCode.BAD_INPUT,
        errors.DataError("no IDX files"): ExitCode.BAD_INPUT,
        errors.RunBusy("run is being written"): ExitCode.BAD_INPUT,
        errors.Diverged("loss reached inf"): ExitCode.DIVERGED,
        errors.DiskFull("MLflow run x marked FAILED: no space"): ExitCode.ERROR,
    }
    for error, code in cases.items():
        line, status = errors.explain(error)
        assert status == code and "\n" not in line and str(error) in line
        assert line.startswith("error: ")
    line, status = errors.explain(errors.Stopped(signal.SIGTERM, "abc", None))
    assert status == ExitCode.SIGTERM and "resume=abc" in line


def test_a_full_disk_is_explained_wherever_it_is_wrapped():
    full = OSError(errno.ENOSPC, "No space left on device", "/x/last.ckpt")
    wrapped = RuntimeError("saving failed")
    wrapped.__cause__ = full
    line, status = errors.explain(wrapped)
    assert status == ExitCode.ERROR and "/x/last.ckpt" in line and "free disk space" in line
    named = errors.disk_full(wrapped, run_id="r1")
    assert isinstance(named, errors.DiskFull) and "MLflow run r1 marked FAILED" in str(named)


def test_a_bug_is_not_explained_away():
    assert errors.explain(KeyError("x")) is None
    assert errors.explain(ZeroDivisionError()) is None
