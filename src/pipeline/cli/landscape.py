"""`pipeline-landscape` (= `python scripts/landscape.py`): optimizer paths on classic 2-D functions.

    pipeline-landscape function=rosenbrock steps=2000 optimizer=adam,rmsprop,momentum

See docs/landscape.md; the work is done in pipeline.landscape.app.
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from pipeline import CONFIG_DIR
from pipeline.cli.logs import quiet_libraries
from pipeline.config.resolvers import register_resolvers


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


def job(cfg: DictConfig) -> None:
    from pipeline.landscape.app import main  # imported here: Hydra's own errors come back fast

    main(cfg)


def app() -> None:
    """The command; conf/ is named by its absolute path, so it is found from any directory."""
    quiet_libraries()  # before MLflow loads
    register_resolvers()  # conf/ uses ${pipeline_root:} and friends
    sys.argv = split_optimizer_arg(sys.argv)
    hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="landscape")(job)()
