"""The epoch metrics that the model adds up once per group of minibatches (model._record)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchmetrics.classification import MulticlassAccuracy

from pipeline.model.metrics import Accuracy, MeanLoss


def minibatches(sizes: list[int], seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(n, 10, generator=generator), torch.randint(0, 10, (n,), generator=generator))
        for n in sizes
    ]


SIZES = [64] * 9 + [17]  # the last minibatch of an epoch is usually smaller


def test_accuracy_and_mean_loss_match_torchmetrics_and_the_sample_mean():
    data = minibatches(SIZES)
    accuracy, mean_loss = Accuracy(), MeanLoss()
    reference = MulticlassAccuracy(num_classes=10, average="micro")
    losses = torch.stack([F.cross_entropy(logits, y) for logits, y in data])
    accuracy.update(torch.cat([lg.argmax(-1) for lg, _ in data]), torch.cat([y for _, y in data]))
    mean_loss.update(losses, torch.tensor(SIZES))
    for logits, y in data:
        reference.update(logits, y)
    assert accuracy.compute() == reference.compute()
    every_sample = F.cross_entropy(
        torch.cat([lg for lg, _ in data]), torch.cat([y for _, y in data])
    )
    assert torch.allclose(mean_loss.compute(), every_sample, rtol=1e-6)  # weighted by size
    assert mean_loss.compute().dtype == accuracy.compute().dtype == torch.float32


def test_the_grouping_of_updates_does_not_change_the_result():
    """Groups of 1, 3 or all minibatches: the same float32 result, bit for bit."""
    data = minibatches(SIZES, seed=1)
    losses = torch.stack([F.cross_entropy(logits, y) for logits, y in data])
    results = set()
    for per_update in (1, 3, len(data)):
        accuracy, mean_loss = Accuracy(), MeanLoss()
        for start in range(0, len(data), per_update):
            chunk = data[start : start + per_update]
            accuracy.update(
                torch.cat([lg.argmax(-1) for lg, _ in chunk]), torch.cat([y for _, y in chunk])
            )
            mean_loss.update(
                losses[start : start + per_update], torch.tensor(SIZES[start : start + per_update])
            )
        results.add((accuracy.compute().item(), mean_loss.compute().item()))
    assert len(results) == 1
