"""Figures of recorded runs."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display needed
import matplotlib.pyplot as plt  # noqa: E402


def plot_run(history: dict[str, list[tuple[int, float]]], path: Path, title: str = "") -> Path:
    """Training loss per step (log scale) and accuracy per epoch, side by side."""
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(11, 4))
    for key, label in (("train/loss", "train (every N steps)"), ("val/loss", "validation")):
        if history.get(key):
            steps, values = zip(*history[key], strict=True)
            loss_ax.plot(steps, values, label=label, marker="o" if key == "val/loss" else None)
    loss_ax.set(xlabel="step", ylabel="loss", yscale="log", title="loss")
    loss_ax.legend()
    for key, label in (("train/acc", "train"), ("val/acc", "validation")):
        if history.get(key):
            values = [v for _, v in history[key]]
            acc_ax.plot(range(1, len(values) + 1), values, marker="o", label=label)
    acc_ax.set(xlabel="epoch", ylabel="accuracy", title="accuracy")
    acc_ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
