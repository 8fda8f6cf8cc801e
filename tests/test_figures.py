"""The sweep report's figure, drawn from runs as load_runs gives them (no training)."""

from __future__ import annotations

import matplotlib.pyplot as plt
import pytest

from pipeline.sweeps.common import RunData
from pipeline.sweeps.figures import DIVERGED_MARKERS, draw


def run(status: str, overrides: dict[str, str], steps_per_epoch: int, epochs: int, every=10):
    losses = [
        (s, 2.0 / (1 + s / steps_per_epoch)) for s in range(every, steps_per_epoch * epochs, every)
    ]
    return RunData(
        run_id=f"{overrides}",
        name=str(overrides),
        status=status,
        overrides=overrides,
        test_acc=0.9,
        curves={
            "train/loss": losses,
            "train/loss_epoch": [(steps_per_epoch * (e + 1), 1.0) for e in range(epochs)],
            "val/acc": [(steps_per_epoch * (e + 1), 0.5 + e / 10) for e in range(epochs)],
            "epoch_time_s": [],
        },
        optimizer="sgd",
    )


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def test_batch_sizes_share_an_epoch_axis():
    runs = [
        run("FINISHED", {"data.batch_size": "1"}, steps_per_epoch=3600, epochs=2),
        run("FINISHED", {"data.batch_size": "64"}, steps_per_epoch=57, epochs=2, every=5),
    ]
    fig = draw(runs, ["data.batch_size"], [("1",), ("64",)], "t")
    loss_ax = fig.axes[0]
    assert loss_ax.get_xlabel() == "epoch"
    ends = [max(line.get_xdata()) for line in loss_ax.lines if line.get_label() in ("1", "64")]
    assert len(ends) == 2 and all(1.8 < end <= 2 for end in ends)  # both reach epoch 2
    low, high = loss_ax.get_ylim()
    ticks = loss_ax.yaxis.get_minorticklocs()
    labels = [
        t.get_text()
        for t, y in zip(loss_ax.get_yticklabels(minor=True), ticks, strict=True)
        if t.get_text() and low <= y <= high
    ]
    assert 0 < len(labels) <= 4  # no wall of overlapping minor tick labels


def test_many_values_get_a_colour_scale_and_diverged_runs_are_marked():
    lrs = [f"{10 ** (k / 3 - 4):.3g}" for k in range(12)]
    runs = [run("FINISHED", {"optimizer.lr": lr}, 57, 2) for lr in lrs[:9]]
    runs += [run("DIVERGED", {"optimizer.lr": lr}, 57, 0) for lr in lrs[9:]]
    for r in runs[9:]:  # stopped inside its first epoch: a few logged steps, no epoch metrics
        r.curves["train/loss"] = [(10, 3.0), (20, 40.0)]
    fig = draw(runs, ["optimizer.lr"], [(lr,) for lr in lrs], "t")
    assert len(fig.axes) == 3 and fig.axes[2].get_ylabel() == "optimizer.lr"  # the colour bar
    loss_ax = fig.axes[0]
    assert loss_ax.get_legend() is None or len(loss_ax.get_legend().get_texts()) <= 1
    dashed = [line for line in loss_ax.lines if line.get_linestyle() == "--"]
    crosses = [line for line in loss_ax.lines if line.get_marker() in DIVERGED_MARKERS]
    assert len(dashed) == len(crosses) == 3
    assert loss_ax.get_xlabel() == "epoch"  # the diverged runs borrow the finished runs' epochs
    assert max(crosses[0].get_xdata()) == pytest.approx(20 / 57)  # no recorded stop: the last
    # Told apart: a marker of its own each, and a legend entry each, in its colour.
    assert len({line.get_marker() for line in crosses}) == 3
    entries = fig.axes[1].get_legend().legend_handles
    assert [h.get_label() for h in entries] == lrs[9:]
    assert [h.get_marker() for h in entries] == [line.get_marker() for line in crosses]
    assert [h.get_color() for h in entries] == [line.get_color() for line in crosses]


def test_a_diverged_runs_marker_sits_at_its_recorded_stop():
    """The guard stops a run at a loss that is never logged as a point (it reads the model's
    highest loss): the marker goes there, and a NaN stop sits on the top edge."""
    runs = [run("FINISHED", {"optimizer.lr": "0.01"}, 57, 2)]
    runs += [run("DIVERGED", {"optimizer.lr": lr}, 57, 0) for lr in ("10", "100")]
    for r in runs[1:]:
        r.curves["train/loss"] = [(10, 3.0), (20, 40.0)]
    runs[1].diverged_at = (26, 1.5e4)  # stopped after 26 steps: its last one logged at 25
    runs[2].diverged_at = (23, float("nan"))
    fig = draw(runs, ["optimizer.lr"], [("0.01",), ("10",), ("100",)], "t")
    loss_ax = fig.axes[0]
    markers = [line for line in loss_ax.lines if line.get_linestyle() == "None"]
    (big,) = [m for m in markers if m.get_xdata()[0] == pytest.approx(25 / 57)]
    assert big.get_ydata()[0] == pytest.approx(1.5e4)
    (nan,) = [m for m in markers if m.get_xdata()[0] == pytest.approx(22 / 57)]
    assert nan.get_ydata()[0] == pytest.approx(loss_ax.get_ylim()[1])
    texts = [t.get_text() for t in loss_ax.get_legend().get_texts()]
    assert texts == ["0.01", "10 (loss 1.5e+04 by step 26)", "100 (loss nan by step 23)"]


def test_few_optimizers_keep_their_fixed_colours():
    from pipeline.sweeps import palette

    runs = [run("FINISHED", {}, 57, 2), run("FINISHED", {}, 57, 2)]
    runs[1].optimizer = "adam"
    fig = draw(runs, ["optimizer"], [("sgd",), ("adam",)], "t")
    colours = {line.get_label(): line.get_color() for line in fig.axes[0].lines}
    assert colours == {"sgd": palette.color("sgd"), "adam": palette.color("adam")}


def test_a_runs_curves_at_batch_size_1_show_the_running_mean():
    """One sample's loss a step spans decades: drawn faint, under its running mean, and the
    axis follows the mean instead of the lowest single-sample loss."""
    import numpy as np

    from pipeline.tracking.figures import draw_run

    rng = np.random.default_rng(0)
    steps = range(7200)
    noisy = [(s, float(np.exp(rng.normal(-1 - s / 7200, 3)))) for s in steps]  # 1e-6 ... 10
    history = {"train/loss": noisy, "val/loss": [(3599, 0.5), (7199, 0.3)]}
    loss_ax = draw_run(history, "t").axes[0]
    faint, mean = [line for line in loss_ax.lines if line.get_label().startswith("train")]
    assert faint.get_alpha() < 0.5 and mean.get_alpha() is None
    assert "running mean" in mean.get_label()
    low = loss_ax.get_ylim()[0]
    assert low >= min(mean.get_ydata()) / 3.5 and low > 100 * min(v for _, v in noisy)

    short = {"train/loss": noisy[:100]}  # few points: as logged, one line
    (line,) = draw_run(short, "t").axes[0].lines
    assert line.get_label() == "train (every step)"
