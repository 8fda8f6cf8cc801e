"""What makes runs of one seed paired: the same initial weights and the same data order.

Both depend on the seed only (the model is built right after `seed_everything`; an epoch's
shuffle is drawn from (seed, epoch): data/batching.py), never on the optimizer. Each run records
fingerprints of both as tags, so that a comparison can check its pairing from MLflow alone.
"""

from __future__ import annotations

import hashlib

import torch

from pipeline.data.batching import IndexBatches

INIT_TAG = "pairing.init_sha"  # the initial weights
ORDER_TAG = "pairing.order_sha"  # the first epoch's order of the training samples


def fingerprint(tensors: list[torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for tensor in tensors:
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def pairing_tags(model: torch.nn.Module, train: tuple[torch.Tensor, torch.Tensor], seed: int):
    """Fingerprints of the model's weights (call before training) and of epoch 0's order."""
    x, y = train
    order = IndexBatches(x, y, 1, shuffle=True, seed=seed).order()
    weights = [value for _, value in sorted(model.state_dict().items())]
    return {INIT_TAG: fingerprint(weights), ORDER_TAG: fingerprint([order])}
