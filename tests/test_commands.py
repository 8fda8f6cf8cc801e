"""The installed commands (pipeline-*, `python -m pipeline`) and what a run prints: nothing else.

The commands are run from .venv/bin as a user runs them after `uv sync` (or `pip install .`),
from a directory that is not the project's.
"""

from __future__ import annotations

import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import runs_in, store_overrides

from pipeline.__main__ import COMMANDS

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
HELP = {  # command -> a text its --help must show
    "train": "optimizer: adadelta, adagrad, adam",  # Hydra's help lists the config groups
    "compare": "--target-acc",
    "landscape": "landscape is powered by Hydra",
    "runs": "clean-stale",
    "server": "--port",
}

# Every line a default run may print (stdout and stderr together), one pattern per kind: a
# third-party line that comes back (a warning, a logger's INFO, a progress bar) matches none.
RUN_LINES = {
    "start": r"MLflow run [0-9a-f]{32} started: mnist \(embedded: .*\), 1 x cpu",
    "epoch": r"epoch \d+/\d+  train/loss_epoch .*  val/acc \S+  \S+s",
    "result": r"MLflow run [0-9a-f]{32}: test/acc 0\.\d{4}",
    "see it": r"See it: make ui   \(or: mlflow ui --backend-store-uri sqlite:///.*\)",
}


def run(*argv: str | Path, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(a) for a in argv], cwd=cwd, capture_output=True, text=True, timeout=timeout
    )


def test_every_console_script_is_installed_and_answers_help(tmp_path):
    assert set(HELP) == set(COMMANDS)  # pyproject.toml's [project.scripts] and python -m agree
    with ThreadPoolExecutor(max_workers=2) as pool:
        done = dict(
            zip(
                HELP,
                pool.map(lambda name: run(BIN / f"pipeline-{name}", "--help", cwd=tmp_path), HELP),
                strict=True,
            )
        )
    for name, result in done.items():
        assert result.returncode == 0, (name, result.stderr[-3000:])
        assert HELP[name] in result.stdout, (name, result.stdout[-3000:])
        assert result.stderr == "", (name, result.stderr[-3000:])


def test_python_m_pipeline_lists_and_runs_the_commands(tmp_path):
    listed = run(sys.executable, "-m", "pipeline", "--help", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert all(re.search(rf"^  {name} ", listed.stdout, re.M) for name in COMMANDS), listed.stdout
    runs = run(sys.executable, "-m", "pipeline", "runs", "--help", cwd=tmp_path)
    assert runs.returncode == 0 and "clean-stale" in runs.stdout, runs.stderr
    wrong = run(sys.executable, "-m", "pipeline", "trian", cwd=tmp_path)
    assert wrong.returncode == 2 and "no command 'trian'" in wrong.stderr


def test_pipeline_train_from_elsewhere_records_the_run_and_prints_only_its_lines(tmp_path):
    """A default run (the model logged too) but 2 epochs, from another directory: conf/ is
    found, the run lands in the given store, and the console shows the run's own lines only."""
    store = tmp_path / "mlruns"
    result = run(
        BIN / "pipeline-train",
        "data.source=embedded",
        "trainer.max_epochs=2",
        *store_overrides(store),
        f"hydra.run.dir={tmp_path / 'out'}",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = (result.stdout + result.stderr).splitlines()
    kinds = []
    for line in lines:
        matched = [kind for kind, pattern in RUN_LINES.items() if re.fullmatch(pattern, line)]
        assert matched, f"a line of no known kind: {line!r}\n" + "\n".join(lines)
        kinds.append(matched[0])
    assert kinds == ["start", "epoch", "epoch", "result", "see it"], lines
    assert result.stderr == ""
    [recorded] = runs_in(store)
    assert recorded.info.status == "FINISHED"
    assert f"MLflow run {recorded.info.run_id}: test/acc" in result.stdout
    assert recorded.data.params["data.source"] == "embedded"
    assert not (tmp_path / "outputs").exists()  # outputs go to the project's folder or as told

    # A resume downloads the run's config and checkpoint: no progress bars, the same lines.
    result = run(
        BIN / "pipeline-train",
        f"resume={recorded.info.run_id}",
        "trainer.max_epochs=3",
        *store_overrides(store),
        f"hydra.run.dir={tmp_path / 'out-2'}",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stderr == ""
    lines = result.stdout.splitlines()
    kinds = [k for line in lines for k, p in RUN_LINES.items() if re.fullmatch(p, line)]
    assert kinds == ["start", "epoch", "result", "see it"], lines


def test_a_parallel_sweep_writes_nothing_on_stderr(tmp_path):
    """A 2-job joblib sweep: its jobs' Lightning, MLflow and joblib chatter stays off stderr."""
    result = run(
        BIN / "pipeline-train",
        "-m",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        "seed=1,2",
        "data.source=embedded",
        "trainer.max_epochs=1",
        "tracking.log_model=false",
        *store_overrides(tmp_path / "mlruns"),
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stderr == ""
    assert "Sweep FINISHED" in result.stdout
