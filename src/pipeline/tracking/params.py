"""What a run is called and which params it records: the resolved config, flattened."""

from __future__ import annotations

import subprocess
from typing import Any

from omegaconf import DictConfig, OmegaConf

from pipeline import PROJECT_ROOT
from pipeline.optim.factory import optimizer_class


def run_name(cfg: DictConfig, overrides: list[str]) -> str:
    """e.g. 'rmsprop lr=0.001 seed=42', plus any other command-line overrides."""
    if cfg.tracking.get("run_name"):
        return str(cfg.tracking.run_name)
    impl = " scratch" if cfg.optimizer.get("impl") == "scratch" else ""
    parts = [f"{cfg.optimizer.name}{impl}", f"lr={cfg.optimizer.lr:g}"]
    skip = (
        "optimizer=",
        "optimizer.lr=",
        "optimizer.impl=",
        "seed=",
        "tracking.",
        "tracking=",
        "paths.",
        "hydra",
    )
    for override in overrides:
        key_value = override.lstrip("+~")
        if not key_value.startswith(skip):
            key, _, value = key_value.partition("=")
            parts.append(f"{key.split('.')[-1]}={value}")
    parts.append(f"seed={cfg.seed}")
    return " ".join(parts)


def carried_overrides(before: list[str], now: list[str], skip: tuple[str, ...] = ()) -> list[str]:
    """A resumed run's overrides for its name: the first command's, each replaced by this
    command's for the same key, then this command's new ones (`skip`: keys left out)."""

    def key(override: str) -> str:
        return override.lstrip("+~").partition("=")[0]

    given = {key(o): o for o in now if key(o) not in skip}
    kept = [given.pop(key(o), o) for o in before if key(o) not in skip]
    return kept + list(given.values())


def flat_params(cfg: DictConfig) -> dict[str, str]:
    """The resolved config as dotted keys, with the optimizer class actually used."""
    container = OmegaConf.to_container(cfg, resolve=True)
    container.pop("hydra", None)
    container.pop("paths", None)
    container.get("tracking", {}).pop("tags", None)  # recorded as the run's tags
    flat: dict[str, str] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key != "_partial_":
                    walk(value, f"{prefix}{key}.")
        else:
            flat[prefix[:-1]] = str(node)

    walk(container, "")
    cls = optimizer_class(cfg.optimizer)
    flat["optimizer.class"] = f"{cls.__module__}.{cls.__qualname__}"
    return flat


def git_state() -> tuple[str, bool]:
    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=10
        ).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD") or "unknown"
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return "unknown", False
    return commit, dirty
