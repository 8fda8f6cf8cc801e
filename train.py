"""Train the MNIST MLP: `python train.py optimizer=rmsprop`, sweeps with `-m`. See README.md."""

import sys

import hydra
from omegaconf import DictConfig

import pipeline  # noqa: F401  (registers the ${pipeline_root:} resolver used by conf/)


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def run(cfg: DictConfig) -> float:
    from pipeline.train import main  # imported here so that Hydra's own errors come back fast

    return main(cfg)


if __name__ == "__main__":
    try:
        run()
    finally:
        # Hydra's sweepers re-raise a failed job's error once the other jobs have run, which
        # skips the on_multirun_end callback: the sweep's parent run is ended here instead.
        sweep = sys.modules.get("pipeline.sweep")  # imported only once a sweep has started
        if sweep is not None:
            stop = sys.exc_info()[1]
            interrupted = sys.modules["pipeline.faults"].is_interrupt(stop)
            sweep.end_open_sweeps("KILLED" if interrupted else "FAILED")
