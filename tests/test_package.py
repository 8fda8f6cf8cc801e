"""The project as a package: its wheel, installed into a fresh environment, trains from any folder.

Offline: the wheel is built by uv from its cache (`make setup` put the build backend there), and
the fresh venv sees the project environment's packages through a path file instead of
downloading them: `pip install --no-deps` of the wheel alone. Only the wheel's own `pipeline`
(with conf/ inside) is on that path, not the checkout's editable one.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from conftest import ROOT, runs_in

pytestmark = pytest.mark.slow


def uv() -> list[str]:
    """How to run uv here: `make setup` installs it for python3 (or it is on PATH)."""
    for python in ("python3", sys._base_executable):
        found = shutil.which(python) or python
        if subprocess.run([found, "-m", "uv", "--version"], capture_output=True).returncode == 0:
            return [found, "-m", "uv"]
    if shutil.which("uv"):
        return ["uv"]
    pytest.fail("no uv: `make setup` installs it (python3 -m pip install uv)")


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A fresh venv holding the wheel; the project environment's packages visible to it."""
    tmp = tmp_path_factory.mktemp("package")
    built = subprocess.run(
        [*uv(), "build", "--wheel", "--offline", "-o", str(tmp / "dist"), str(ROOT)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert built.returncode == 0, built.stderr[-3000:]
    (wheel,) = (tmp / "dist").glob("pipeline-*.whl")
    venv = tmp / "venv"
    subprocess.run([sys._base_executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python = venv / "bin" / "python"
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    # A plain path line: the project environment's own .pth files (its editable pipeline) are
    # not read, so `import pipeline` can only find the wheel's.
    (Path(site) / "project_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    pip = [str(python), "-m", "pip", "install", "--no-deps", "--no-index", "--quiet", str(wheel)]
    subprocess.run(pip, check=True, timeout=300)
    return venv


def test_the_wheel_carries_conf_and_the_commands(installed):
    where = subprocess.run(
        [str(installed / "bin" / "python"), "-c",
         "import pipeline; print(pipeline.__file__); print(pipeline.CONFIG_DIR)"],
        capture_output=True, text=True, check=True, cwd="/",
    ).stdout.split()  # fmt: skip
    assert where[0].startswith(str(installed)) and not where[0].startswith(str(ROOT / "src"))
    assert Path(where[1]) == Path(where[0]).parent / "conf"
    assert (Path(where[1]) / "train.yaml").is_file()
    for command in ("train", "compare", "landscape", "runs", "server"):
        assert (installed / "bin" / f"pipeline-{command}").is_file()


def test_pipeline_train_from_another_folder_trains_and_records_there(installed, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = subprocess.run(
        [str(installed / "bin" / "pipeline-train"), "data.source=embedded",
         "trainer.max_epochs=1", "trainer.limit_train_batches=5", "tracking.log_model=false"],
        cwd=elsewhere, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = runs_in(elsewhere / "mlruns")  # a wheel keeps its store where the command starts
    assert run.info.status == "FINISHED" and 0 <= run.data.metrics["test/acc"] <= 1
    assert f"MLflow run {run.info.run_id}: test/acc" in result.stdout
    assert list((elsewhere / "outputs" / "runs").iterdir())
