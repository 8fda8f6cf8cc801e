"""Train the MNIST MLP: `python train.py optimizer=rmsprop`, sweeps with `-m`. See README.md.

The same command is installed as `pipeline-train` (pipeline.cli.train).
"""

from pipeline.cli.train import app

if __name__ == "__main__":
    app()
