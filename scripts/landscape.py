"""Optimizer paths on classic 2-D functions: `python scripts/landscape.py function=rosenbrock
steps=2000 optimizer=adam,rmsprop,momentum`. See docs/landscape.md.

The same command is installed as `pipeline-landscape`: the code is pipeline.cli.landscape.
"""

from pipeline.cli.landscape import app, split_optimizer_arg  # noqa: F401  (tests call it)

if __name__ == "__main__":
    app()
