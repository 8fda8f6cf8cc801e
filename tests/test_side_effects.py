"""Commands write to outputs/ (or the folder given), never over files git tracks (docs/*.png):
a tracked file rewritten by a command marks every later run `git.dirty=true`.

The UI test's screenshots go to its own folder unless UI_SCREENSHOTS names one (tests/test_ui.py).
"""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import ROOT, store_overrides

pytestmark = pytest.mark.slow

TINY = ["trainer.max_epochs=1", "tracking.log_model=false"]
TINY += [f"trainer.limit_{split}_batches=2" for split in ("train", "val", "test")]


def git_status() -> str:
    """Tracked files changed, and untracked ones where the docs' figures and results live."""
    return subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=all", "--", "docs", "scripts", "conf"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def command(*argv: str, cwd) -> None:
    done = subprocess.run([sys.executable, *argv], cwd=cwd, capture_output=True, text=True)
    assert done.returncode == 0, (argv, done.stderr[-3000:])


def test_figure_and_benchmark_commands_write_only_where_told(tmp_path):
    before = git_status()
    store = store_overrides(tmp_path / "mlruns")
    figure_out, bench_out = tmp_path / "figure", tmp_path / "bench"
    command(str(ROOT / "scripts" / "scratch_vs_torch.py"), "--presets", "sgd", "--out",
            str(figure_out), *store, *TINY, cwd=tmp_path)  # fmt: skip
    command(str(ROOT / "scripts" / "bench.py"), "--n", "600", "--reps", "1", "--epochs", "1",
            "--batch-sizes", "64", "--out", str(bench_out), cwd=tmp_path)  # fmt: skip
    assert git_status() == before
    assert (figure_out / "scratch_vs_torch.png").stat().st_size > 10_000
    assert {p.name for p in bench_out.iterdir()} == {"bench.json", "bench.md"}
