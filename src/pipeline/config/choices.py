"""The names a config chooses from (data sources and sets, activations, losses).

A module of their own so that checking a config (pipeline.config) imports torch but not
Lightning: `python train.py optimizer.lr=-1` is refused in seconds, before the training code loads.
"""

from __future__ import annotations

from torch import nn

SOURCES = ("auto", "local", "download", "embedded")
DATASETS = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST"}  # our name -> torchvision's
ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh}
LOSSES = ("cross_entropy", "mse")
