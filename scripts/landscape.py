"""Optimizer paths on classic 2-D functions: `python scripts/landscape.py function=rosenbrock
steps=2000 optimizer=adam,rmsprop,momentum`. See docs/landscape.md."""

import sys

import hydra
from omegaconf import DictConfig

from pipeline.cli.logs import quiet_libraries
from pipeline.config.resolvers import register_resolvers

quiet_libraries()  # before MLflow loads
register_resolvers()  # conf/ uses ${pipeline_root:} and friends


def split_optimizer_arg(argv: list[str]) -> list[str]:
    """`optimizer=a,b,c` → `optimizer=a optimizers=[a,b,c]`.

    Hydra reads a comma list for a config group as a sweep and refuses it without `-m`; here it
    means "these presets on one figure". The first preset stays the composed `optimizer`, so Hydra
    still checks overrides such as `optimizer.lr=0.05` against a real preset.
    """
    out: list[str] = []
    for arg in argv:
        key, sep, value = arg.partition("=")
        names = [n.strip() for n in value.strip("[]").split(",") if n.strip()]
        if key == "optimizer" and sep and names:
            out += [f"optimizer={names[0]}", f"optimizers=[{','.join(names)}]"]
        else:
            out.append(arg)
    return out


@hydra.main(version_base="1.3", config_path="../conf", config_name="landscape")
def run(cfg: DictConfig) -> None:
    from pipeline.landscape.app import (
        main,  # imported here so that Hydra's own errors come back fast
    )

    main(cfg)


if __name__ == "__main__":
    sys.argv = split_optimizer_arg(sys.argv)
    run()
