"""The figure of a sweep's report: training loss and validation accuracy per swept value.

The x axis is epochs for both panels (a step is 1/steps-per-epoch of one), so that runs with
other batch sizes compare. A few swept values get a legend; many values of one numeric key (an
Optuna search) get a colour scale instead. Diverged runs are drawn dashed up to where they
stopped, with a marker of their own at the recorded stop (tags diverged.step, diverged.loss) and a
legend entry each, never left out.
"""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd
from matplotlib import colors as mcolors
from matplotlib.lines import Line2D

from pipeline.sweeps import palette
from pipeline.sweeps.common import NO_SWEPT_KEY, RunData, fmt_value
from pipeline.tracking.figures import SMOOTH_ABOVE, log_ticks, running_mean  # noqa: F401
from pipeline.tracking.status import Status

MAX_LEGEND = 8  # more values than this of one numeric key: a colour scale
# Each diverged run its own marker (and its legend entry), so that runs of like colours differ.
DIVERGED_MARKERS = ("x", "+", "*", "v", "s", "D", "^", "P")


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


def steps_per_epoch(run: RunData) -> int | None:
    """The global step at the end of the first epoch (where train/loss_epoch is logged)."""
    epochs = run.curves.get("train/loss_epoch") or []
    return epochs[0][0] if epochs and epochs[0][0] > 0 else None


def batch_key(run: RunData) -> str:
    return run.overrides.get("data.batch_size", "")


def color_scale(order: list[tuple[str, ...]], keys: list[str]):
    """(colormap, norm) when `order` holds many numeric values of one key, else None."""
    if len(keys) != 1 or keys == [NO_SWEPT_KEY] or len(order) <= MAX_LEGEND:
        return None
    try:
        values = [float(v[0]) for v in order]
    except ValueError:
        return None
    wide = min(values) > 0 and max(values) / min(values) > 20
    norm = (mcolors.LogNorm if wide else mcolors.Normalize)(min(values), max(values))
    return plt.get_cmap("viridis"), norm


def stop_entry(run: RunData, values: tuple[str, ...], keys: list[str], color, n: int) -> Line2D:
    """A diverged run's legend entry: its value, and the loss and step it was stopped at."""
    where = ""
    if run.diverged_at is not None:
        step, loss = run.diverged_at
        where = f" (loss {loss:.3g} by step {step})"
    marker = DIVERGED_MARKERS[n % len(DIVERGED_MARKERS)]
    text = f"{label(values, keys)}{where}"
    return Line2D([], [], color=color, ls="--", marker=marker, mew=2, label=text)


def plot(
    runs: list[RunData], keys: list[str], order: list[tuple[str, ...]], path: Path, title: str
) -> Path:
    fig = draw(runs, keys, order, title)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def draw(runs: list[RunData], keys: list[str], order: list[tuple[str, ...]], title: str):
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(12, 4.5), layout="constrained")
    scale = color_scale(order, keys)
    tab10 = plt.get_cmap("tab10")
    # Steps per epoch by batch size, from any run that finished an epoch (diverged runs may not)
    spe: dict[str, int] = {}
    for run in runs:
        if (steps := steps_per_epoch(run)) is not None:
            spe.setdefault(batch_key(run), steps)
    by_epoch = all(batch_key(r) in spe for r in runs if r.status in ("FINISHED", "DIVERGED"))
    stopped: list[Line2D] = []  # one legend entry per diverged run: its colour and marker
    smoothed = False
    lowest = math.inf  # the lowest drawn mean loss: the axis stops a little below it
    pending: list[tuple[plt.Axes, float, object, str]] = []  # crosses of a NaN/inf loss
    for i, values in enumerate(order):
        group = [r for r in runs if r.key(keys) == values]
        ok = [r for r in group if r.status == Status.FINISHED]
        diverged = [r for r in group if r.status == "DIVERGED"]
        if scale:
            color = scale[0](scale[1](float(values[0])))
        elif keys == [NO_SWEPT_KEY]:  # one row per optimizer: its colour in every figure
            color = palette.color(values[0])
        else:
            color = tab10(i % 10)
        per_epoch = spe[batch_key(group[0])] if by_epoch else 1  # steps become epochs
        first = len(stopped)  # this group's diverged runs' markers: the next ones
        for ax, key, by_index in ((loss_ax, "train/loss", False), (acc_ax, "val/acc", True)):
            stats = band([r.curves[key] for r in ok], by_index)
            if not stats.empty:
                x = stats.index if by_index else stats.index.to_numpy() / per_epoch
                mean = stats["mean"]
                if len(mean) > SMOOTH_ABOVE:  # e.g. batch size 1: one sample's loss per point
                    ax.plot(x, mean, color=color, lw=0.5, alpha=0.25)
                    mean = mean.rolling(len(mean) // 15, min_periods=1, center=True).mean()
                    smoothed = True
                if not by_index:
                    lowest = min(lowest, float(mean.min()))
                ax.plot(
                    x,
                    mean,
                    color=color,
                    label=None if scale else label(values, keys),
                    marker="o" if by_index and not scale else None,
                    lw=1.2 if scale else 1.5,
                )
                if len(ok) > 1:
                    ax.fill_between(x, stats["min"], stats["max"], color=color, alpha=0.2)
            for n, run in enumerate(diverged, start=first):
                marker = DIVERGED_MARKERS[n % len(DIVERGED_MARKERS)]
                curve = [(s, v) for s, v in run.curves[key] if math.isfinite(v)]
                if not by_index and run.diverged_at is not None:  # the stop, as recorded:
                    # after N optimizer steps, whose last one's loss is logged at step N - 1
                    stop, loss = run.diverged_at[0] - 1, run.diverged_at[1]
                    curve = [(s, v) for s, v in curve if s <= stop] + [(stop, loss)]
                if not curve:
                    continue
                xs = (
                    list(range(1, len(curve) + 1))
                    if by_index
                    else [s / per_epoch for s, _ in curve]
                )
                ys = [v for _, v in curve]
                ax.plot(xs, ys, color=color, ls="--", lw=1)
                if math.isfinite(ys[-1]):
                    ax.plot(xs[-1:], ys[-1:], color=color, marker=marker, ms=9, mew=2, ls="none")
                else:  # NaN or inf: at the top edge, above everything drawn
                    pending.append((ax, xs[-1], color, marker))
        stopped += [stop_entry(r, values, keys, color, first + j) for j, r in enumerate(diverged)]
    loss_ax.set(
        xlabel="epoch" if by_epoch else "step",
        ylabel="training loss",
        yscale="log",
        title="training loss" + (" (faint: as logged; line: running mean)" if smoothed else ""),
    )
    acc_ax.set(xlabel="epoch", ylabel="validation accuracy", title="validation accuracy")
    acc_ax.xaxis.get_major_locator().set_params(integer=True)
    log_ticks(loss_ax, lowest)
    for ax, x, color, marker in pending:  # once the axes' limits are final
        top = ax.get_ylim()[1]
        ax.plot([x], [top], color=color, marker=marker, ms=9, mew=2, ls="none", clip_on=False)
        ax.set_ylim(top=top)
    if scale:
        mappable = plt.cm.ScalarMappable(norm=scale[1], cmap=scale[0])
        fig.colorbar(mappable, ax=[loss_ax, acc_ax], label=keys[0])
        if stopped:
            acc_ax.legend(handles=stopped, fontsize="small", title="diverged (dashed, to its stop)")
    else:
        legend_ax = loss_ax if loss_ax.lines else acc_ax  # train/loss needs logged steps
        handles = [h for h in legend_ax.get_legend_handles_labels()[0]]
        if handles or stopped:
            legend_ax.legend(
                handles=handles + stopped,
                title=" ".join(keys) if len(keys) == 1 else None,
                fontsize="small",
            )
    if len(runs) > len(order):
        title += "\n(line: mean over seeds, band: min–max)"
    fig.suptitle(textwrap.fill(title, 110), fontsize="medium")
    return fig
