"""'Reached the target' in both reports: a val/acc of exactly the target, measured in float32
and stored as float64, counts; one float32 step below does not."""

from __future__ import annotations

import math

import pytest
import torch

from pipeline.sweeps.common import RunData, reaches
from pipeline.sweeps.protocol.analysis import to_target
from pipeline.sweeps.protocol.runs import Run
from pipeline.sweeps.report import group_row

# What the store holds for a val/acc of 0.9: torchmetrics' float32, widened by .item().
AT = torch.tensor(0.9, dtype=torch.float32).item()
BELOW = torch.nextafter(torch.tensor(0.9), torch.tensor(0.0)).item()  # one float32 step under


def curves(last: float) -> dict[str, list[tuple[int, float]]]:
    return {
        "val/acc": [(100, 0.5), (200, last)],
        "epoch_time_s": [(100, 1.0), (200, 2.0)],
        "train/loss": [(100, 1.0), (200, 0.5)],
        "train/loss_epoch": [],
    }


def test_stored_value_is_not_the_decimal():
    assert AT == 0.8999999761581421 and AT < 0.9  # the trap: a float64 compare says "not reached"


@pytest.mark.parametrize(
    ("value", "target", "expected"),
    [(AT, 0.9, True), (BELOW, 0.9, False), (0.95, 0.9, True), (math.nan, 0.9, False)],
)
def test_reaches(value, target, expected):
    assert reaches(value, target) is expected


@pytest.mark.parametrize(("last", "epochs", "reached"), [(AT, 2.0, "1/1"), (BELOW, None, "0/1")])
def test_sweep_report_counts_the_boundary(last, epochs, reached):
    run = RunData("r", "r", "FINISHED", {}, 0.9, curves(last), "sgd")
    row = group_row([run], target=0.9)
    assert row["reached_target"] == reached
    if epochs is None:
        assert math.isnan(row["epochs_to_target"])
    else:
        assert row["epochs_to_target"] == epochs


@pytest.mark.parametrize(("last", "expected"), [(AT, (201.0, 3.0)), (BELOW, (math.inf, math.inf))])
def test_protocol_report_counts_the_boundary(last, expected):
    run = Run("r", "r", "replicate", "sgd", None, 1, "FINISHED", {}, 0.9, curves(last))
    assert to_target(run, 0.9) == expected
