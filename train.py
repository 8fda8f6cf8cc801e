"""Train the MNIST MLP: `python train.py optimizer=rmsprop`, sweeps with `-m`. See README.md."""

import sys

import hydra
from omegaconf import DictConfig

import pipeline  # noqa: F401  (registers the ${pipeline_root:} resolver used by conf/)


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def run(cfg: DictConfig) -> float:
    check_first(cfg)
    from pipeline.train import main  # imported here so that Hydra's own errors come back fast

    return main(cfg)


def check_first(cfg: DictConfig) -> None:
    """Bad values exit in seconds, before the training code (Lightning) loads; train() checks
    again, all of it. Sweeps check every job up front; resume= and ckpt_path= take the old
    run's config first: both are left to train()."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if HydraConfig.get().mode == RunMode.MULTIRUN or cfg.get("resume") or cfg.get("ckpt_path"):
        return
    from pipeline.config import ConfigError, validate

    try:
        validate(cfg, lightning=False)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)  # as pipeline.train.main reports it
        sys.exit(2)


def program() -> None:
    try:
        run()
    finally:
        # Hydra's sweepers re-raise a failed job's error once the other jobs have run, which
        # skips the on_multirun_end callback: the sweep's parent run is ended here instead.
        sweep = sys.modules.get("pipeline.sweep")  # imported with Hydra's callbacks
        if sweep is not None:
            sweep.end_open_sweeps(sys.exc_info()[1])


if __name__ == "__main__":
    program()
