"""The figure of a sweep's report: training loss and validation accuracy per swept value."""

from __future__ import annotations

import textwrap
from pathlib import Path

import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd
from matplotlib.ticker import FuncFormatter

from pipeline.sweeps import palette
from pipeline.sweeps.common import NO_SWEPT_KEY, RunData, fmt_value


def label(values: tuple[str, ...], keys: list[str]) -> str:
    if len(keys) == 1:
        return fmt_value(values[0])
    return " ".join(f"{k}={fmt_value(v)}" for k, v in zip(keys, values, strict=True))


def band(curves: list[list[tuple[int, float]]], by_index: bool) -> pd.DataFrame:
    """mean/min/max per step (or per position, for per-epoch metrics) over the runs."""
    frames = [
        pd.Series([v for _, v in c], index=range(1, len(c) + 1) if by_index else [s for s, _ in c])
        for c in curves
        if c
    ]
    if not frames:
        return pd.DataFrame(columns=["mean", "min", "max"])
    stacked = pd.concat(frames, axis=1)
    stacked = stacked[~stacked.index.duplicated(keep="last")]
    return pd.DataFrame(
        {"mean": stacked.mean(axis=1), "min": stacked.min(axis=1), "max": stacked.max(axis=1)}
    )


def plot(
    runs: list[RunData], keys: list[str], order: list[tuple[str, ...]], path: Path, title: str
) -> Path:
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(12, 4.5))
    colors = plt.get_cmap("tab10")
    for i, values in enumerate(order):
        ok = [r for r in runs if r.status == "FINISHED" and r.key(keys) == values]
        # One row per optimizer: its colour from the palette, the same as in every figure.
        color = palette.color(values[0]) if keys == [NO_SWEPT_KEY] else colors(i % 10)
        for ax, key, by_index in ((loss_ax, "train/loss", False), (acc_ax, "val/acc", True)):
            stats = band([r.curves[key] for r in ok], by_index)
            if stats.empty:
                continue
            ax.plot(
                stats.index,
                stats["mean"],
                color=color,
                label=label(values, keys),
                marker="o" if by_index else None,
            )
            if len(ok) > 1:
                ax.fill_between(stats.index, stats["min"], stats["max"], color=color, alpha=0.2)
    loss_ax.set(xlabel="step", ylabel="training loss", yscale="log", title="training loss")
    acc_ax.set(xlabel="epoch", ylabel="validation accuracy", title="validation accuracy")
    acc_ax.xaxis.get_major_locator().set_params(integer=True)
    loss_ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    loss_ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    legend_ax = loss_ax if loss_ax.lines else acc_ax  # train/loss needs log_every_n_steps steps
    if legend_ax.lines:
        legend_ax.legend(title=" ".join(keys) if len(keys) == 1 else None, fontsize="small")
    if len(runs) > len(order):
        title += "\n(line: mean over seeds, band: min–max)"
    fig.suptitle(textwrap.fill(title, 110), fontsize="medium")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
