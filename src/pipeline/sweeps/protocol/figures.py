"""The figures of a fair comparison: sensitivity, expected best vs trials, replicate curves.

Each optimizer has its colour from pipeline.sweeps.palette in every figure.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter

from pipeline.sweeps.figures import SMOOTH_ABOVE, band, running_mean
from pipeline.sweeps.palette import color
from pipeline.sweeps.protocol import stats
from pipeline.sweeps.protocol.analysis import Row
from pipeline.tracking.figures import log_ticks
from pipeline.training.probe import ACC_KEY as PROBE_ACC

LR = "optimizer.lr"


def _lr(hyperparameters: dict[str, str]) -> float:
    try:
        return float(hyperparameters[LR])
    except (KeyError, ValueError):
        return math.nan


def sensitivity(rows: list[Row], path: Path, title: str) -> Path:
    """Validation accuracy of every trial against its learning rate (log axis), one panel per
    optimizer; the selected trial ringed; failed and diverged trials on a strip at the floor."""
    cols = min(3, max(1, len(rows)))
    nrows = -(-len(rows) // cols)
    fig, axes = plt.subplots(
        nrows, cols, figsize=(4.2 * cols, 3.3 * nrows + 0.4), sharey=True, squeeze=False
    )
    ok_values = [t.val_acc() for r in rows for t in r.trials if t.ok] or [0.0, 1.0]
    low, high = min(ok_values), max(ok_values)
    span = max(high - low, 0.01)
    strip = any(not t.ok for r in rows for t in r.trials)  # trials without a result go there
    floor = low - 0.12 * span if strip else low - 0.08 * span
    for ax in axes.flat[len(rows) :]:
        ax.axis("off")
    for ax, row in zip(axes.flat, rows, strict=False):
        c = color(row.name)
        ok = [t for t in row.trials if t.ok]
        ax.scatter([_lr(t.hyperparameters) for t in ok], [t.val_acc() for t in ok], color=c, s=28)
        if row.selected:
            sel = row.selected
            ax.scatter(
                _lr(sel.hyperparameters),
                sel.val_acc(),
                s=150,
                facecolors="none",
                edgecolors="black",
                linewidths=1.5,
                zorder=3,
            )
        if strip:
            ax.axhspan(low - 0.3 * span, floor, color="0.93", lw=0)
            ax.text(
                0.01, 0.04, "no result", transform=ax.transAxes, fontsize="x-small", color="0.4"
            )
        for t in row.trials:
            if not t.ok:
                marker = "x" if t.status == "DIVERGED" else "v"
                y = low - 0.21 * span
                ax.scatter(_lr(t.hyperparameters), y, marker=marker, color=c, s=45, zorder=3)
        if not math.isnan(_lr(row.default_hp)):
            ax.axvline(_lr(row.default_hp), color="0.5", ls=":", lw=1)
        lrs = [v for v in (_lr(t.hyperparameters) for t in row.trials) if v > 0]
        if lrs:
            ax.set_xlim(min(lrs) / 2, max(lrs) * 2)
        ax.set_xscale("log")
        ax.set_title(f"{row.name}: {len(ok)}/{len(row.trials)} trials finished", fontsize="medium")
        ax.set_xlabel("learning rate")
    axes[0, 0].set_ylim(low - 0.3 * span if strip else floor, high + 0.08 * span)
    digits = 2 if span > 0.05 else 3
    axes[0, 0].yaxis.set_major_formatter(
        FuncFormatter(lambda v, _: "" if v < floor else f"{v:.{digits}f}")
    )
    for ax in axes[:, 0]:
        ax.set_ylabel("best validation accuracy")
    gray = dict(color="0.35", ls="none")
    handles = [
        Line2D([], [], marker="o", **gray, label="trial"),
        Line2D([], [], marker="o", mfc="none", mec="black", ms=11, ls="none", label="selected"),
        Line2D([], [], marker="x", **gray, label="diverged"),
        Line2D([], [], marker="v", **gray, label="failed / killed"),
        Line2D([], [], color="0.5", ls=":", label="default lr"),
    ]
    fig.suptitle(f"{title}: sensitivity to the learning rate (every trial)", fontsize="medium")
    if len(rows) < axes.size:  # a spare panel holds the legend
        axes.flat[len(rows)].legend(handles=handles, loc="center", fontsize="small")
        return _save(fig, path)
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize="small")
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    return _save(fig, path, layout=False)


def trial_scores(row: Row) -> np.ndarray:
    """Validation accuracy per trial; a failed or diverged trial yields nothing: 0."""
    return np.array([t.val_acc() if t.ok else 0.0 for t in row.trials])


def expected_best(rows: list[Row], path: Path, title: str) -> Path:
    """Expected best validation accuracy after k trials (Dodge et al. 2019), 95% bootstrap band;
    the right panel zooms in on the later trials, where the optimizers' curves meet."""
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    floor, late, top = [], [], []
    for row in rows:
        scores = trial_scores(row)
        if not len(scores):
            continue
        ks = np.arange(1, len(scores) + 1)
        line = stats.expected_max(scores, ks)
        low, high = stats.expected_max_band(scores, ks)
        failed = sum(not t.ok for t in row.trials)
        label = f"{row.name} ({failed}/{len(scores)} failed)" if failed else row.name
        for ax in axes:
            ax.plot(ks, line, color=color(row.name), marker="o", ms=3, label=label)
            ax.fill_between(ks, low, high, color=color(row.name), alpha=0.15, lw=0)
        start = min(len(ks) - 1, max(1, len(ks) // 4))
        floor.append(line[0])
        late.append((start + 1, line[start]))
        top.append(high.max())
    if floor:  # bands of few trials reach far down; the lines decide the scale
        high = max(top) + 0.002
        axes[0].set_ylim(max(0.0, min(floor) - 0.25 * (high - min(floor))), high)
        k0, lowest = min(k for k, _ in late), min(v for _, v in late)
        axes[1].set_xlim(k0 - 0.5, axes[1].get_xlim()[1])
        axes[1].set_ylim(lowest - 0.3 * (high - lowest), high)
    for ax, name in zip(axes, ("all k", "zoom on the later trials"), strict=True):
        ax.set(xlabel="number of trials k", ylabel="expected best validation accuracy", title=name)
        ax.xaxis.get_major_locator().set_params(integer=True)
    axes[0].legend(fontsize="small", loc="lower right")
    fig.suptitle(
        f"{title}: expected best of k trials (band: 95% bootstrap over the trials; a failed "
        "trial scores 0)",
        fontsize="medium",
    )
    return _save(fig, path)


def replicate_curves(rows: list[Row], path: Path, title: str, target: float) -> Path:
    """Training loss and validation accuracy of the replicates: mean over seeds, min–max band."""
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(14, 4.5))
    smoothed = probed = False
    for row in rows:
        ok = [r for r in row.replicates if r.ok]
        for ax, key in ((loss_ax, "train/loss"), (acc_ax, "val/acc")):
            curves = [r.curves[key] for r in ok]
            if key == "train/loss":  # per-step losses of six optimizers: only their trends read
                smoothed = smoothed or any(len(c) > SMOOTH_ABOVE for c in curves)
                curves = [running_mean(c) for c in curves]
            b = band(curves, by_index=False)
            if b.empty:
                continue
            label = f"{row.name} ({len(ok)} seeds)"
            ax.plot(
                b.index,
                b["mean"],
                color=color(row.name),
                label=label,
                marker="o" if key == "val/acc" else None,
                ms=3,
            )
            ax.fill_between(b.index, b["min"], b["max"], color=color(row.name), alpha=0.2, lw=0)
        probes = [r.curves.get(PROBE_ACC) or [] for r in ok]
        if probes and all(probes):  # the step probe, which steps to target read (mean over seeds)
            b = band(probes, by_index=False)
            acc_ax.plot(b.index, b["mean"], color=color(row.name), lw=0.8, alpha=0.6)
            probed = True
    if not math.isnan(target):
        acc_ax.axhline(target, color="0.4", ls="--", lw=1, label=f"target {target:g}")
    loss_ax.set(
        xlabel="optimizer step",
        ylabel="training loss",
        yscale="log",
        title="training loss" + (" (running mean of each seed)" if smoothed else ""),
    )
    log_ticks(loss_ax)
    acc_title = "validation accuracy" + (
        " (points: each epoch's; thin line: the step probe)" if probed else ""
    )
    acc_ax.set(xlabel="optimizer step", ylabel="validation accuracy", title=acc_title)
    if acc_ax.lines:  # one legend for both panels, beside them: it hides no curve
        acc_ax.legend(fontsize="small", loc="center left", bbox_to_anchor=(1.02, 0.5))
    fig.suptitle(
        f"{title}: replicates with the selected settings (line: mean over seeds, band: min–max)",
        fontsize="medium",
    )
    return _save(fig, path)


def _save(fig, path: Path, layout: bool = True) -> Path:
    if layout:
        fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
