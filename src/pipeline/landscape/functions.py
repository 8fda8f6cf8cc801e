"""Classic 2-D test functions with their known minima."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Function2D:
    name: str
    formula: str  # for the figure's title
    f: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # elementwise, so grids work too
    minima: tuple[tuple[float, float], ...]  # every global minimum, value 0
    start: tuple[float, float]  # the standard start
    bounds: tuple[tuple[float, float], tuple[float, float]]  # the plotted (x, y) ranges

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.f(x, y)

    def nearest_minimum(self, point: Sequence[float]) -> tuple[tuple[float, float], float]:
        """(the minimum closest to `point`, its Euclidean distance)."""
        return min(
            ((m, math.dist(point, m)) for m in self.minima),
            key=lambda pair: pair[1],
        )


FUNCTIONS: dict[str, Function2D] = {
    fn.name: fn
    for fn in (
        Function2D(
            "himmelblau",
            "$(x^2+y-11)^2 + (x+y^2-7)^2$",
            lambda x, y: (x**2 + y - 11) ** 2 + (x + y**2 - 7) ** 2,
            # (3, 2) exactly; the other three refined by Newton's method to float64 precision
            (
                (3.0, 2.0),
                (-2.805118086952745, 3.131312518250573),
                (-3.779310253377747, -3.2831859912861696),
                (3.5844283403304917, -1.8481265269644034),
            ),
            start=(0.0, 0.0),
            bounds=((-6.0, 6.0), (-6.0, 6.0)),
        ),
        Function2D(
            "rosenbrock",
            "$(1-x)^2 + 100\\,(y-x^2)^2$",
            lambda x, y: (1 - x) ** 2 + 100 * (y - x**2) ** 2,
            ((1.0, 1.0),),
            start=(-1.2, 1.0),  # Rosenbrock's own start (1960)
            bounds=((-2.0, 2.0), (-1.0, 3.0)),
        ),
        Function2D(
            # A quadratic with curvatures 0.2 and 20 (condition number 100): steep across the
            # valley, almost flat along it. Plain SGD crawls along it, momentum motivates itself.
            "funnel",
            "$0.1\\,x^2 + 10\\,y^2$",
            lambda x, y: 0.1 * x**2 + 10 * y**2,
            ((0.0, 0.0),),
            start=(-8.0, 1.0),
            bounds=((-10.0, 10.0), (-2.0, 2.0)),
        ),
    )
}
