"""Figures of recorded runs."""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display needed
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import (  # noqa: E402
    FuncFormatter,
    LogLocator,
    MaxNLocator,
    NullFormatter,
)


def log_ticks(ax, lowest: float = math.nan) -> None:
    """Plain numbers on decades; a few minor ticks labelled when the axis spans under 1.6."""
    if math.isfinite(lowest) and lowest > 0:
        ax.set_ylim(bottom=max(ax.get_ylim()[0], lowest / 3))
    plain = FuncFormatter(lambda v, _: f"{v:g}")
    ax.yaxis.set_major_locator(LogLocator(base=10, numticks=8))
    ax.yaxis.set_major_formatter(plain)
    low, high = ax.get_ylim()
    decades = math.log10(high / low) if low > 0 else math.inf
    narrow = decades < 1.6
    if narrow:  # a few labelled minor ticks, more when the axis spans less
        subs = (2, 5) if decades > 1 else (2, 3, 5) if decades > 0.5 else (2, 3, 4, 5, 6, 7, 8, 9)
        ax.yaxis.set_minor_locator(LogLocator(base=10, subs=subs))
    ax.yaxis.set_minor_formatter(plain if narrow else NullFormatter())


def plot_run(
    history: dict[str, list[tuple[int, float]]], path: Path, title: str = "", every: int = 1
) -> Path:
    """Training loss per step (log scale; `every`: steps between points) and accuracy per epoch,
    side by side."""
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(11, 4))
    train_label = "train (every step)" if every == 1 else f"train (every {every} steps)"
    for key, label in (("train/loss", train_label), ("val/loss", "validation")):
        if history.get(key):
            steps, values = zip(*history[key], strict=True)
            loss_ax.plot(steps, values, label=label, marker="o" if key == "val/loss" else None)
    loss_ax.set(xlabel="optimizer step", ylabel="loss (log scale)", yscale="log", title="loss")
    log_ticks(loss_ax)
    loss_ax.legend()
    for key, label in (("train/acc", "train"), ("val/acc", "validation")):
        if history.get(key):
            values = [v for _, v in history[key]]
            acc_ax.plot(range(1, len(values) + 1), values, marker="o", label=label)
    acc_ax.set(xlabel="epoch", ylabel="accuracy", title="accuracy")
    acc_ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    acc_ax.legend()
    fig.suptitle(textwrap.fill(title, 120), fontsize="medium")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, metadata={"Title": title})  # readable back without OCR
    plt.close(fig)
    return path
