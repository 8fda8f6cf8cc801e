"""Optimizer paths on classic 2-D test functions, driven by the same presets as training.

The classic loop from the PyTorch teaching material, once per optimizer preset and from one start:
`pred = f(x)`, `optimizer.zero_grad()`, `pred.backward()`, `optimizer.step()`. Every path is drawn
on the function's contour, recorded in MLflow (a parent run per call, a child per optimizer) and
ranked in a table. `scripts/landscape.py` is the command-line entry.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import numpy as np
import torch
from hydra import compose
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import HydraException, MissingConfigException
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, ListConfig, OmegaConf

from pipeline.config import ConfigError, validate_optimizer, validate_tracking
from pipeline.optim import optimizer_factory
from pipeline.tracking import ensure_experiment, flat_params, git_state

matplotlib.use("Agg")  # files only; no display needed
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.colors import LogNorm  # noqa: E402

CONFIG_NAME = "landscape"  # conf/landscape.yaml


# ---------------------------------------------------------------------------------------------
# The test functions: to add one, add an entry to FUNCTIONS.
# ---------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------
# The descent
# ---------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------
# Configuration: one composed config per preset named in `optimizers`
# ---------------------------------------------------------------------------------------------


def compose_optimizers(cfg: DictConfig, overrides: Sequence[str]) -> list[DictConfig]:
    """One config per preset in `cfg.optimizers`, each with the command line's other overrides
    (so `optimizer.lr=0.05` applies to every preset). Needs Hydra initialised (an app or a test's
    `initialize_config_dir`)."""
    names = cfg.optimizers
    if not OmegaConf.is_list(names) or not names:
        raise ConfigError(
            f"optimizers={names!r} is not allowed: a list of presets from conf/optimizer/ "
            "(e.g. optimizer=adam,rmsprop)"
        )
    chooses = ("optimizer", "optimizers")
    rest = [o for o in overrides if o.partition("=")[0].lstrip("+~") not in chooses]
    configs = []
    for name in names:
        try:
            configs.append(compose(CONFIG_NAME, overrides=[*rest, f"optimizer={name}"]))
        except MissingConfigException as error:
            presets = GlobalHydra.instance().config_loader().get_group_options("optimizer")
            raise ConfigError(
                f"optimizer={name} is not allowed: no such preset in conf/optimizer/; choose "
                f"from {', '.join(presets)} (e.g. optimizer=adam,rmsprop)"
            ) from error
        except HydraException as error:  # e.g. an override key this preset does not have
            raise ConfigError(f"optimizer={name}: {' '.join(str(error).split())}") from error
    for child in configs:
        validate_optimizer(child)
    return configs


def resolve_start(cfg: DictConfig, fn: Function2D) -> tuple[float, float]:
    if cfg.start is None:
        return fn.start
    start = cfg.start
    ok = (
        isinstance(start, ListConfig)
        and len(start) == 2
        and all(isinstance(v, int | float) and not isinstance(v, bool) for v in start)
        and all(math.isfinite(v) for v in start)
    )
    if not ok:
        raise ConfigError(
            f"start={OmegaConf.to_container(start) if OmegaConf.is_config(start) else start!r} "
            "is not allowed: two finite numbers [x, y], or null for the function's standard "
            "start (e.g. start=[-4,0])"
        )
    return float(start[0]), float(start[1])


def validate_landscape(cfg: DictConfig) -> tuple[Function2D, tuple[float, float]]:
    """Check the non-optimizer keys; returns (the function, the start)."""
    if cfg.function not in FUNCTIONS:
        raise ConfigError(
            f"function={cfg.function!r} is not allowed: choose one of {', '.join(FUNCTIONS)} "
            "(e.g. function=rosenbrock)"
        )
    steps = cfg.steps
    if not (isinstance(steps, int) and not isinstance(steps, bool) and steps > 0):
        raise ConfigError(f"steps={steps!r} is not allowed: an integer > 0 (e.g. steps=2000)")
    factor = cfg.diverge_factor
    if not (isinstance(factor, int | float) and not isinstance(factor, bool) and factor > 1):
        raise ConfigError(
            f"diverge_factor={factor!r} is not allowed: a number > 1 (e.g. diverge_factor=1e6)"
        )
    validate_tracking(cfg)  # a store that cannot be written fails here, not half-way
    fn = FUNCTIONS[cfg.function]
    start = resolve_start(cfg, fn)
    value = fn(*torch.tensor(start, dtype=torch.float64)).item()
    if not math.isfinite(value):  # e.g. start=[1e200,0]: nothing to descend from
        raise ConfigError(
            f"start=[{start[0]:g},{start[1]:g}] is not allowed: f there is {value} "
            f"(e.g. start=[{fn.start[0]:g},{fn.start[1]:g}])"
        )
    return fn, start


# ---------------------------------------------------------------------------------------------
# Reporting: figure and table
# ---------------------------------------------------------------------------------------------


def label(t: Trajectory, fn: Function2D) -> str:
    head = f"{t.name} (lr {t.lr:g})"
    if t.diverged:
        return f"{head}: diverged at step {t.diverged_at}"
    _, distance = fn.nearest_minimum(t.final_point)
    return f"{head}: f={t.final_value:.2e}, {distance:.1e} from a minimum"


def plot_landscape(
    fn: Function2D, start: Sequence[float], trajectories: Sequence[Trajectory], path: Path
) -> Path:
    """Left: contour (log-spaced levels) with every path; right: f per step (log scale)."""
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
    ax.plot(*zip(*fn.minima, strict=True), "*", color="gold", mec="k", ms=15, label=minima)
    colors = plt.get_cmap("tab10").colors
    for i, t in enumerate(trajectories):
        color = colors[i % len(colors)]
        ax.plot(t.points[:, 0], t.points[:, 1], "-", color=color, lw=1.6, alpha=0.9)
        ax.plot(*t.final_point, "X", color=color, mec="k", ms=10)
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
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


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


# ---------------------------------------------------------------------------------------------
# The whole call: check → parent run → one child run per optimizer → figure → table
# ---------------------------------------------------------------------------------------------


@dataclass
class LandscapeResult:
    parent_run_id: str
    child_run_ids: list[str]  # one per trajectory, same order
    trajectories: list[Trajectory]
    figure: Path
    table: str


def _preset(child: DictConfig) -> str:
    """e.g. "adam", or "adam scratch" for the from-scratch implementation."""
    impl = " scratch" if child.optimizer.get("impl") == "scratch" else ""
    return f"{child.optimizer.name}{impl}"


def _log_child(client: MlflowClient, run_id: str, child: DictConfig, t: Trajectory, fn) -> None:
    params = {k: v for k, v in flat_params(OmegaConf.masked_copy(child, ["optimizer"])).items()}
    params.update(function=fn.name, start=str(tuple(t.points[0])), steps=str(child.steps))
    client.log_batch(run_id, params=[Param(k, v[:6000]) for k, v in params.items()])
    now = int(time.time() * 1000)
    metrics = [Metric("f", float(v), now, step) for step, v in enumerate(t.values)]
    (mx, my), distance = fn.nearest_minimum(t.final_point)
    final = {"final_f": t.final_value, "final_x": t.final_point[0], "final_y": t.final_point[1]}
    final |= {"distance": distance, "diverged": float(t.diverged)}
    if t.diverged:
        final["diverged_step"] = float(t.diverged_at)
    metrics += [Metric(k, v, now, len(t.values) - 1) for k, v in final.items()]
    for i in range(0, len(metrics), 1000):  # MLflow takes at most 1000 metrics per batch
        client.log_batch(run_id, metrics=metrics[i : i + 1000], synchronous=True)
    client.set_tag(run_id, "result", "diverged" if t.diverged else "finished")


def run_landscape(
    cfg: DictConfig, children: Sequence[DictConfig], workdir: Path, overrides: Sequence[str] = ()
) -> LandscapeResult:
    """Descend `cfg.function` with each composed optimizer config and record it all."""
    fn, start = validate_landscape(cfg)  # all input is checked before any run is created
    client = MlflowClient(cfg.tracking.uri)
    experiment_id = ensure_experiment(client, cfg.tracking.experiment, cfg.tracking.artifact_root)
    commit, dirty = git_state()
    names = [str(c.optimizer.name) for c in children]
    # e.g. "himmelblau start=(-4,0) steps=5000 lr=0.05": the optimizer overrides shared by all
    shared = [o.lstrip("+").removeprefix("optimizer.") for o in overrides if "optimizer." in o]
    run_name = cfg.tracking.get("run_name") or " ".join(
        [f"{fn.name} start=({start[0]:g},{start[1]:g}) steps={cfg.steps}", *shared]
    )
    tags = {
        "function": fn.name,
        "git.commit": commit,
        "git.dirty": str(dirty).lower(),
        "mlflow.source.git.commit": commit,
        "mlflow.source.name": "scripts/landscape.py",
        "mlflow.source.type": "LOCAL",
        "version.torch": torch.__version__,
    }
    parent = client.create_run(experiment_id, run_name=run_name, tags=tags).info.run_id
    result = LandscapeResult(parent, [], [], workdir / f"landscape_{fn.name}.png", "")
    try:
        params = {"function": fn.name, "start": str(start), "steps": str(cfg.steps)}
        params |= {"optimizers": ",".join(names), "diverge_factor": str(cfg.diverge_factor)}
        client.log_batch(parent, params=[Param(k, v) for k, v in params.items()])
        client.log_dict(parent, {"overrides": list(overrides)}, "overrides.yaml")
        for child in children:
            t = descend(
                fn,
                start,
                optimizer_factory(child.optimizer),
                cfg.steps,
                name=_preset(child),
                lr=float(child.optimizer.lr),
                diverge_factor=float(cfg.diverge_factor),
            )
            child_tags = {
                **tags,
                "mlflow.parentRunId": parent,
                "optimizer": str(child.optimizer.name),
                "optimizer.impl": str(child.optimizer.get("impl", "torch")),
            }
            run_id = client.create_run(
                experiment_id, run_name=f"{t.name} lr={t.lr:g}", tags=child_tags
            ).info.run_id
            try:
                _log_child(client, run_id, child, t, fn)
            except BaseException:
                client.set_terminated(run_id, "FAILED")
                raise
            client.set_terminated(run_id, "FINISHED")
            result.child_run_ids.append(run_id)
            result.trajectories.append(t)
        plot_landscape(fn, start, result.trajectories, result.figure)
        client.log_artifact(parent, str(result.figure))
        result.table = ranking(result.trajectories, fn)
        client.log_text(parent, result.table + "\n", "ranking.txt")
    except BaseException:
        client.set_terminated(parent, "FAILED")
        raise
    client.set_terminated(parent, "FINISHED")
    return result


def main(cfg: DictConfig) -> None:
    """Entry used by scripts/landscape.py: friendly errors, the ranking and where things went."""
    from pipeline.train import hydra_overrides, output_dir

    overrides = hydra_overrides()
    try:
        children = compose_optimizers(cfg, overrides)
        result = run_landscape(cfg, children, output_dir(cfg), overrides)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    print(result.table)
    print(f"figure: {result.figure}")
    print(
        f"MLflow run {result.parent_run_id} (experiment {cfg.tracking.experiment}), "
        f"one child run per optimizer; see it: make ui"
    )
