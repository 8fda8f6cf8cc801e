"""Train the MNIST MLP: `python train.py optimizer=rmsprop`, sweeps with `-m`. See README.md."""

import hydra
from omegaconf import DictConfig

from pipeline.cli import train as cli
from pipeline.cli.logs import quiet_libraries
from pipeline.config.resolvers import register_resolvers

quiet_libraries()  # before MLflow loads
register_resolvers()  # conf/ uses ${pipeline_root:}, ${pid:}, ${pipeline_gpus:}


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def run(cfg: DictConfig) -> float:
    return cli.job(cfg)


if __name__ == "__main__":
    cli.program(run)
