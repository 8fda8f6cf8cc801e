"""Names of the run tags that more than one part of the pipeline writes or reads, and the run's
own tags from the config (`tracking.tags`)."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf

from pipeline.errors import ConfigError

DIVERGED_TAG = "diverged"  # "true" on a run stopped by a diverged loss (status FAILED)
DIVERGED_LOSS_TAG, DIVERGED_STEP_TAG = "diverged.loss", "diverged.step"  # where it was stopped
ERROR_TAG = "error"  # the exception that failed a run, one line
CHECKPOINT_DIR_TAG = "checkpoint.dir"  # where the run's Lightning checkpoints are written
MAX_TAG_VALUE = 5000
RESERVED_PREFIX = "mlflow."  # MLflow's system tags: never from tracking.tags


def config_tags(cfg: DictConfig) -> dict[str, str]:
    """`tracking.tags` as MLflow tags: nested keys joined with dots, so that the override
    `+tracking.tags.protocol.stage=tune` gives the tag `protocol.stage=tune`. Values must be
    scalars (ConfigError otherwise, before any run exists)."""
    node = OmegaConf.select(cfg, "tracking.tags")
    if node is None:
        return {}
    if not OmegaConf.is_dict(node):
        raise ConfigError(
            f"tracking.tags={node} must be a mapping of tag names to values, "
            "e.g. +tracking.tags.team=vision"
        )
    flat: dict[str, str] = {}

    def walk(value: Any, key: str) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(v, f"{key}.{k}" if key else str(k))
        elif isinstance(value, list) or (isinstance(value, str) and len(value) > MAX_TAG_VALUE):
            raise ConfigError(
                f"tracking.tags.{key}: a tag value must be a number, a word or a short text "
                f"(at most {MAX_TAG_VALUE} characters), e.g. +tracking.tags.{key}=baseline"
            )
        elif key.startswith(RESERVED_PREFIX):
            # MLflow's own tags: mlflow.parentRunId would file this run under another sweep's
            # parent (its report), mlflow.user / mlflow.source.* would misstate who ran what.
            raise ConfigError(
                f"tracking.tags.{key}: tags named {RESERVED_PREFIX}* are MLflow's own, set by "
                "the pipeline (a sweep's jobs get their parent from the sweep); use another "
                "name, e.g. +tracking.tags.team=vision"
            )
        else:
            flat[key] = "" if value is None else str(value)

    walk(OmegaConf.to_container(node, resolve=True), "")
    return flat
