"""Train the MNIST MLP under many optimizer settings and record every run in MLflow.

Sub-packages mirror conf/: config, data, model, optim, training, tracking, sweeps, landscape;
cli holds the entry points. Importing the package does nothing but define PROJECT_ROOT.
"""

from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]
