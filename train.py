"""Train the MNIST MLP: `python train.py optimizer=rmsprop`, sweeps with `-m`. See README.md."""

import hydra
from omegaconf import DictConfig

import pipeline  # noqa: F401  (registers the ${pipeline_root:} resolver used by conf/)


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def run(cfg: DictConfig) -> float:
    from pipeline.train import main  # imported here so that Hydra's own errors come back fast

    return main(cfg)


if __name__ == "__main__":
    run()
