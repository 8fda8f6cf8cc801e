"""The paths drawn on the function's contour, and their ranking as a table."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np
import torch
from matplotlib.colors import LogNorm  # noqa: E402

from pipeline.landscape.descent import Trajectory
from pipeline.landscape.functions import Function2D
from pipeline.sweeps import palette


def label(t: Trajectory, fn: Function2D) -> str:
    head = f"{t.name} (lr {t.lr:g})"
    if t.diverged:
        return f"{head}: diverged at step {t.diverged_at}"
    _, distance = fn.nearest_minimum(t.final_point)
    return f"{head}: f={t.final_value:.2e}, {distance:.1e} from a minimum"


def plot_landscape(
    fn: Function2D, start: Sequence[float], trajectories: Sequence[Trajectory], path: Path
) -> Path:
    fig = draw_landscape(fn, start, trajectories)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def draw_landscape(fn: Function2D, start: Sequence[float], trajectories: Sequence[Trajectory]):
    """Left: contour (log-spaced levels) with every path; right: f per step (log scale). Each
    preset has its colour of every figure (sweeps.palette); the minima's stars lie on top."""
    (x0, x1), (y0, y1) = fn.bounds
    # widen the view to a start outside the standard bounds
    pad = 0.05
    x0, x1 = min(x0, start[0] - pad * (x1 - x0)), max(x1, start[0] + pad * (x1 - x0))
    y0, y1 = min(y0, start[1] - pad * (y1 - y0)), max(y1, start[1] + pad * (y1 - y0))
    gx, gy = torch.meshgrid(
        torch.linspace(x0, x1, 400, dtype=torch.float64),
        torch.linspace(y0, y1, 400, dtype=torch.float64),
        indexing="xy",
    )
    z = fn(gx, gy).numpy()
    low = max(float(z.min()), float(z.max()) * 1e-8, 1e-6)
    levels = np.logspace(np.log10(low), np.log10(z.max()), 30)

    fig, (ax, curve_ax) = plt.subplots(
        1, 2, figsize=(14, 6.2), gridspec_kw={"width_ratios": [1.15, 1]}
    )
    filled = ax.contourf(
        gx, gy, np.clip(z, low, None), levels=levels, norm=LogNorm(), cmap="Greys", alpha=0.75
    )
    ax.contour(gx, gy, z, levels=levels[::3], colors="k", linewidths=0.3, alpha=0.4)
    fig.colorbar(filled, ax=ax, label="f(x, y)  (log scale)", format="%.0e")
    minima = "minima" if len(fn.minima) > 1 else "minimum"
    star = dict(color="gold", mec="k", ms=15, zorder=10)  # above the paths' end markers
    ax.plot(*zip(*fn.minima, strict=True), "*", label=minima, **star)
    for t in trajectories:
        color = palette.color(t.name)
        ax.plot(t.points[:, 0], t.points[:, 1], "-", color=color, lw=1.6, alpha=0.9)
        ax.plot(*t.final_point, "X", color=color, mec="k", ms=10, zorder=5)
        values = np.maximum(t.values, 1e-16)  # an exact 0 has no place on a log axis
        curve_ax.plot(np.arange(len(values)), values, color=color, lw=1.4, label=label(t, fn))
        if t.diverged:
            curve_ax.plot(len(values) - 1, values[-1], "x", color=color, ms=10, mew=2)
    ax.plot(*start, "o", color="white", mec="k", ms=11, mew=1.5, label=f"start {tuple(start)}")
    ax.set(xlim=(x0, x1), ylim=(y0, y1), xlabel="x", ylabel="y")
    ax.set_title(f"{fn.name}: {fn.formula}   (end of each path: X)")
    ax.legend(loc="upper left", fontsize=8, framealpha=0.9)
    # symlog x: the first few steps, where most of the action is, get as much room as the rest
    curve_ax.set_xscale("symlog", linthresh=10)
    curve_ax.set(
        yscale="log", xlabel="step (linear to 10, then log)", ylabel="f(x)  (floored at 1e-16)"
    )
    curve_ax.set_title("f at each step")
    curve_ax.grid(True, which="major", alpha=0.3)
    fig.legend(*curve_ax.get_legend_handles_labels(), loc="lower center", ncol=2, fontsize=9)
    rows = (len(trajectories) + 1) // 2
    fig.tight_layout(rect=(0, 0.045 * rows + 0.02, 1, 1))
    return fig


def ranking(trajectories: Sequence[Trajectory], fn: Function2D) -> str:
    """A plain-text table, best final value first; diverged paths last."""
    order = sorted(trajectories, key=lambda t: (t.diverged, t.final_value))
    width = max(10, *(len(t.name) for t in order))
    lines = [
        f"{'rank':>4}  {'optimizer':<{width}} {'lr':>8}  {'final f':>10}  {'distance':>9}  "
        f"{'end point':<22} result"
    ]
    for rank, t in enumerate(order, 1):
        (mx, my), distance = fn.nearest_minimum(t.final_point)
        x, y = t.final_point
        if t.diverged:  # the end point is the last one before the divergence
            value, dist, result = f"{'-':>10}", f"{'-':>9}", f"diverged at step {t.diverged_at}"
        else:
            value, dist = f"{t.final_value:>10.3e}", f"{distance:>9.2e}"
            result = f"nearest minimum ({mx:g}, {my:g})"
        lines.append(
            f"{rank:>4}  {t.name:<{width}} {t.lr:>8g}  {value}  {dist}  "
            f"({x:>9.4f}, {y:>9.4f})  {result}"
        )
    return "\n".join(lines)
