"""The classic loop on a 2-D function: pred = f(x); zero_grad; backward; step."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from pipeline.landscape.functions import Function2D


@dataclass
class Trajectory:
    name: str  # the preset, e.g. "adam"
    lr: float
    points: np.ndarray  # (n, 2): the start, then the point after each step; finite values only
    values: np.ndarray  # (n,): f at each of those points
    diverged_at: int | None  # the step whose point was not finite or beyond the limit

    @property
    def final_point(self) -> tuple[float, float]:
        return float(self.points[-1, 0]), float(self.points[-1, 1])

    @property
    def final_value(self) -> float:
        return float(self.values[-1])

    @property
    def diverged(self) -> bool:
        return self.diverged_at is not None


def descend(
    fn: Function2D,
    start: Sequence[float],
    make_optimizer: Callable[[list[torch.Tensor]], torch.optim.Optimizer],
    steps: int,
    name: str = "",
    lr: float = float("nan"),
    diverge_factor: float = 1e6,
) -> Trajectory:
    """Minimise `fn` from `start` for `steps` steps with the classic loop; record the path.

    A value that is not finite, or above `diverge_factor * max(f(start), 1)`, ends the descent as
    diverged; the path keeps the points before it.
    """
    # float64: distances to a minimum of 1e-8 stay meaningful
    x = torch.tensor(list(start), dtype=torch.float64, requires_grad=True)
    optimizer = make_optimizer([x])
    points = np.empty((steps + 1, 2))
    values = np.empty(steps + 1)
    limit = None
    diverged_at = None
    for step in range(steps + 1):
        pred = fn(x[0], x[1])
        value = pred.item()
        if limit is None:
            limit = diverge_factor * max(value, 1.0)
        if not value <= limit:  # also catches NaN
            diverged_at = step
            break
        points[step] = x.detach().numpy()
        values[step] = value
        if step == steps:
            break
        optimizer.zero_grad()
        pred.backward()
        optimizer.step()
    n = steps + 1 if diverged_at is None else diverged_at
    return Trajectory(name, lr, points[:n], values[:n], diverged_at)
