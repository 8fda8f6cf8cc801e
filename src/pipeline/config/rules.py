"""The building blocks of the config checks: the error, and checks that word their messages alike.

Every message names the key, the bad value, what is allowed, and an example of a fix.
"""

from __future__ import annotations

import math

from omegaconf import DictConfig, OmegaConf

from pipeline.errors import ConfigError

MAX_HIDDEN_SIZE = 65536  # one 784 x 65536 layer is 200 MB of float32 weights: far past this MLP
MAX_SEED = 2**32 - 1  # numpy's seed range, which pl.seed_everything passes the seed to
# MLflow 3's tracking stores by URI scheme (the plain file store, `file:` or a path, is refused).
DATABASE_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")  # SQLAlchemy: scheme[+driver]
SERVER_SCHEMES = ("http", "https")


def is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check(cfg: DictConfig, key: str, ok: bool, allowed: str, example: str) -> None:
    if not ok:
        value = OmegaConf.select(cfg, key)
        raise ConfigError(f"{key}={value!r} is not allowed: {allowed} (e.g. {key}={example})")


def number(
    cfg: DictConfig,
    key: str,
    low: float,
    high: float | None,
    example: str,
    low_open: bool = False,
    high_open: bool = True,
) -> None:
    value = OmegaConf.select(cfg, key)
    ok = is_number(value) and math.isfinite(value)
    ok = ok and (value > low if low_open else value >= low)
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    interval = (
        f"{'(' if low_open else '['}{low}, {'inf' if high is None else high}"
        f"{')' if high_open or high is None else ']'}"
    )
    check(cfg, key, ok, f"must be a finite number in {interval}", example)


def positive_int(cfg: DictConfig, key: str, example: str, high: int | None = None) -> None:
    value = OmegaConf.select(cfg, key)
    ok = is_int(value) and value > 0 and (high is None or value <= high)
    allowed = "must be an integer > 0" if high is None else f"must be an integer in [1, {high}]"
    check(cfg, key, ok, allowed, example)


def finite_floats(cfg: DictConfig, group: str, defaults: dict[str, object] | None = None) -> None:
    """Every float directly in `group` is finite: inf and nan are no hyperparameter values."""
    for key, value in cfg[group].items():
        if isinstance(value, float) and not math.isfinite(value):
            default = (defaults or {}).get(key)
            example = f" (e.g. {group}.{key}={default})" if is_number(default) else ""
            raise ConfigError(
                f"{group}.{key}={value!r} is not allowed: must be a finite number{example}"
            )
