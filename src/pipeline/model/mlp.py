"""The MLP and its loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.config.choices import ACTIVATIONS


class MLP(nn.Sequential):
    """input -> [Linear -> activation] per hidden size -> Linear -> logits."""

    def __init__(
        self, input_size: int, hidden_sizes: list[int], num_classes: int, activation: str
    ) -> None:
        layers: list[nn.Module] = []
        width = input_size
        for hidden in hidden_sizes:
            layers += [nn.Linear(width, hidden), ACTIVATIONS[activation]()]
            width = hidden
        layers.append(nn.Linear(width, num_classes))
        super().__init__(*layers)
        # What builds it again (a spooled model is rebuilt from these and its state_dict).
        self.init_args = {
            "input_size": input_size,
            "hidden_sizes": list(hidden_sizes),
            "num_classes": num_classes,
            "activation": activation,
        }


def classification_loss(logits: torch.Tensor, target: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "mse":  # the classic derivation: squared error of softmax outputs vs one-hot
        one_hot = F.one_hot(target, logits.shape[-1]).to(logits.dtype)
        return F.mse_loss(logits.softmax(dim=-1), one_hot)
    return F.cross_entropy(logits, target)
