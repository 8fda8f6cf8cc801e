"""Search spaces in Hydra's sweep syntax (conf/search_space/, hydra.sweeper.params), as Optuna
distributions, and drawing a trial's values from them.

  tag(log, interval(1e-5, 1.0))   log-uniform float        interval(0.5, 0.99)   uniform float
  interval(1, 8)                  uniform int              range(16, 129, 16)    int with a step
  choice(a, b, c)                 categorical              0.9                   fixed value
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pipeline.errors import ConfigError

if TYPE_CHECKING:
    import optuna


def distributions(space: dict[str, str], where: str) -> dict[str, Any]:
    """{key: an Optuna distribution, or a fixed value as text}; ConfigError for bad syntax."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    parser = OverridesParser.create()
    found: dict[str, Any] = {}
    for key, text in space.items():
        try:
            (override,) = parser.parse_overrides([f"{key}={text}"])
            found[str(key)] = _distribution(override)
        except (HydraException, ValueError, TypeError) as error:
            raise ConfigError(
                f"{where}.{key}={text}: not a search space Optuna can draw from ({error}); "
                "e.g. tag(log, interval(1e-5, 1.0)), interval(0.5, 0.99) or choice(1, 2)"
            ) from None
    return found


def _distribution(override: Any) -> Any:
    from hydra.core.override_parser.types import IntervalSweep, RangeSweep
    from optuna.distributions import (
        CategoricalDistribution,
        FloatDistribution,
        IntDistribution,
    )

    if not override.is_sweep_override():
        return override.get_value_element_as_str()
    value = override.value()
    if override.is_choice_sweep() or (override.is_range_sweep() and value.shuffle):
        return CategoricalDistribution(list(override.sweep_string_iterator()))
    if isinstance(value, RangeSweep):
        if any(isinstance(v, float) for v in (value.start, value.stop, value.step)):
            return FloatDistribution(value.start, value.stop - value.step, step=value.step)
        return IntDistribution(int(value.start), int(value.stop) - 1, step=int(value.step))
    if isinstance(value, IntervalSweep):
        log = "log" in value.tags
        if isinstance(value.start, int) and isinstance(value.end, int):
            return IntDistribution(value.start, value.end, log=log)
        return FloatDistribution(float(value.start), float(value.end), log=log)
    raise ValueError(f"{type(value).__name__} is not supported")


def suggest(trial: optuna.trial.Trial, space: dict[str, Any]) -> None:
    """Draw the trial's values (a value it already has is kept: a trial taken over)."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    for key, dist in space.items():
        if isinstance(dist, str):
            continue
        if isinstance(dist, CategoricalDistribution):
            trial.suggest_categorical(key, dist.choices)
        elif isinstance(dist, FloatDistribution):
            trial.suggest_float(key, dist.low, dist.high, log=dist.log, step=dist.step)
        else:
            trial.suggest_int(key, dist.low, dist.high, log=dist.log, step=dist.step)


def overrides(params: dict[str, Any], space: dict[str, Any]) -> list[str]:
    """A trial's values and the space's fixed values as command-line overrides."""
    fixed = [f"{k}={v}" for k, v in space.items() if isinstance(v, str)]
    return fixed + [f"{k}={v!r}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items()]


def suggest_seeded(study: Any, trial: Any, space: Any, sampler_cfg: Any) -> None:
    """`suggest`, with the study's sampler seeded from the trial's number: a trial's draw then
    depends on its number only, whichever worker takes it and whenever."""
    from hydra.utils import instantiate

    sampler = dict(sampler_cfg)
    if sampler.get("seed") is not None:
        sampler["seed"] = int(sampler["seed"]) + trial.number
    study.sampler = instantiate(sampler)
    suggest(trial, space)


# Samplers whose draw ignores earlier results, and TPE's own default of such first draws.
INDEPENDENT = ("RandomSampler", "QMCSampler", "GridSampler", "BruteForceSampler")
TPE_STARTUP = 10  # optuna.samplers.TPESampler(n_startup_trials=10)


def independent_draws(sampler_cfg: Any, trials: int) -> int:
    """How many of a search's first trials the sampler draws without earlier results: TPE's
    random start-up (n_startup_trials), every trial of an independent sampler, else none."""
    target = str(dict(sampler_cfg).get("_target_", ""))
    if target.endswith(INDEPENDENT):
        return trials
    if target.endswith("TPESampler"):
        return min(trials, int(dict(sampler_cfg).get("n_startup_trials", TPE_STARTUP)))
    return 0
