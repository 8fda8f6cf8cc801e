"""Train the MNIST MLP under many optimizer settings and record every run in MLflow.

Sub-packages mirror conf/: config, data, model, optim, training, tracking, sweeps, landscape;
cli holds the entry points. Importing the package does nothing but define PROJECT_ROOT and
CONFIG_DIR.
"""

from pathlib import Path

_SOURCE_ROOT = Path(__file__).resolve().parents[2]  # the checkout, for an editable install

# A checkout (`uv sync` installs it editable) keeps its store, outputs and conf/ at its root. A
# wheel (`pip install .`) carries conf/ inside the package, and runs are kept where they start.
if (_SOURCE_ROOT / "conf" / "train.yaml").is_file():
    PROJECT_ROOT = _SOURCE_ROOT
    CONFIG_DIR = _SOURCE_ROOT / "conf"
else:
    PROJECT_ROOT = Path.cwd()
    CONFIG_DIR = Path(__file__).resolve().parent / "conf"
