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
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from hydra import compose
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import HydraException, MissingConfigException
from hydra.utils import get_class
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, ListConfig, OmegaConf

from pipeline.config.checks import validate_optimizer, validate_tracking
from pipeline.errors import ConfigError
from pipeline.landscape.descent import Trajectory, descend
from pipeline.landscape.functions import FUNCTIONS, Function2D
from pipeline.landscape.plot import plot_landscape, ranking
from pipeline.optim.factory import optimizer_factory
from pipeline.tracking.lifecycle import ending
from pipeline.tracking.params import flat_params, git_state
from pipeline.tracking.store import ensure_experiment, open_store

CONFIG_NAME = "landscape"  # conf/landscape.yaml


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
        if getattr(get_class(child.optimizer._target_), "wants_hidden_split", False):
            raise ConfigError(
                f"optimizer={child.optimizer.name} works on a network's hidden weight matrices; "
                "a landscape's point has none: leave it out here"
            )
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
    client = open_store(cfg.tracking.uri)
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
    with ending(client, parent):
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
            with ending(client, run_id):
                _log_child(client, run_id, child, t, fn)
            result.child_run_ids.append(run_id)
            result.trajectories.append(t)
        plot_landscape(fn, start, result.trajectories, result.figure)
        client.log_artifact(parent, str(result.figure))
        result.table = ranking(result.trajectories, fn)
        client.log_text(parent, result.table + "\n", "ranking.txt")
    return result


def main(cfg: DictConfig) -> None:
    """Entry used by scripts/landscape.py: friendly errors, the ranking and where things went."""
    from pipeline.config.job import hydra_overrides, output_dir

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
