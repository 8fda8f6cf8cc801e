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


SMOOTH_ABOVE = 200  # a loss curve with more points is drawn faint, under its running mean


def running_mean(curve: list[tuple[int, float]]) -> list[tuple[int, float]]:
    """A long per-step loss curve as its centred running mean over 1/15 of its points."""
    if len(curve) <= SMOOTH_ABOVE:
        return curve
    import pandas as pd

    values = pd.Series([v for _, v in curve]).rolling(len(curve) // 15, min_periods=1, center=True)
    return list(zip([s for s, _ in curve], values.mean(), strict=True))


def plot_run(
    history: dict[str, list[tuple[int, float]]], path: Path, title: str = "", every: int = 1
) -> Path:
    fig = draw_run(history, title, every)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, metadata={"Title": title})  # readable back without OCR
    plt.close(fig)
    return path


def draw_run(history: dict[str, list[tuple[int, float]]], title: str = "", every: int = 1):
    """Training loss per step (log scale; `every`: steps between points) and accuracy per epoch,
    side by side. A long loss curve (batch size 1: one sample's loss a point, spanning decades)
    is drawn faint under its running mean, and the axis follows the mean."""
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(11, 4))
    train_label = "train (every step)" if every == 1 else f"train (every {every} steps)"
    train = history.get("train/loss") or []
    lowest = math.nan
    if len(train) > SMOOTH_ABOVE:
        steps, values = zip(*train, strict=True)
        loss_ax.plot(steps, values, color="C0", lw=0.5, alpha=0.25, label=f"{train_label}, faint")
        train, train_label = running_mean(train), "train, running mean"
        lowest = min((v for _, v in train if math.isfinite(v) and v > 0), default=math.nan)
    for key, label, curve in (
        ("train/loss", train_label, train),
        ("val/loss", "validation", history.get("val/loss") or []),
    ):
        if curve:
            steps, values = zip(*curve, strict=True)
            marker = "o" if key == "val/loss" else None
            loss_ax.plot(
                steps, values, label=label, marker=marker, color=f"C{key != 'train/loss':d}"
            )
    loss_ax.set(xlabel="optimizer step", ylabel="loss (log scale)", yscale="log", title="loss")
    log_ticks(loss_ax, lowest)
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
    return fig
