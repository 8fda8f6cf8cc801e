"""The loops the pipeline is measured against, and the data they all train on.

(a) raw: the dataset as one normalised tensor, batches cut by index, `zero_grad/forward/
    backward/step`; nothing else. (a') the same with each batch cut into one reused tensor, as
    the pipeline cuts its minibatches (data.Group): the like-for-like loop for (c).
(b) classic: `torchvision.datasets.MNIST` over the same IDX files with a per-sample
    `ToTensor() + Normalize` transform, `DataLoader(shuffle=True)`, then the same step.
(c) pipeline: `pipeline.train.train(cfg)` itself on a config composed like `train.py` does
    (`optimizer=momentum`, `data.source=local` over the same IDX files): the same DataModule,
    LightningModule, Trainer, callbacks and MLflow run; its epoch time is `epoch_time_s` (the
    training part of an epoch, validation excluded), the median over its epochs. "MLflow off"
    keeps everything but the metric writes to the store.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.model.mlp import MLP

LR, MOMENTUM = 0.01, 0.9
LOOPS = {
    "a": "(a) raw PyTorch loop",
    "a_buf": "(a') raw loop, reused input buffer",
    "b": "(b) classic tutorial loop",
    "c_off": "(c) pipeline, MLflow off",
    "c_on": "(c) pipeline, MLflow on",
}


# ---------------------------------------------------------------------------------------------
# Data: synthetic or real, written once as IDX files that (b) and (c) read like real MNIST
# ---------------------------------------------------------------------------------------------


def synthetic(n_train: int, n_test: int, seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return {
        split: (rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), rng.integers(0, 10, n))
        for split, n in (("train", n_train), ("test", n_test))
    }


def write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape
    )
    path.write_bytes(header + np.ascontiguousarray(array, dtype=np.uint8).tobytes())


def write_mnist_layout(root: Path, splits: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
    """root/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte, as torchvision expects."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images, labels = splits[split]
        write_idx(raw / f"{prefix}-images-idx3-ubyte", images)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels.astype(np.uint8))


# ---------------------------------------------------------------------------------------------
# The loops; each returns (wall seconds, CPU seconds, samples) of one training epoch
# ---------------------------------------------------------------------------------------------


def new_model(device: torch.device) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    model = MLP(784, [200], 10, "relu").to(device)
    return model, torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)


def raw_epoch(x: torch.Tensor, y: torch.Tensor, batch_size: int, model, optimizer, buffer=False):
    """(a); `buffer`: (a'), the inputs cut into one reused tensor as the pipeline's groups do."""
    wall, cpu = time.perf_counter(), time.process_time()
    order = torch.randperm(len(x), device=x.device)
    reused = x.new_empty((batch_size, *x.shape[1:])) if buffer else None
    for start in range(0, len(x), batch_size):
        index = order[start : start + batch_size]
        if reused is None:
            inputs = x[index]
        else:
            inputs = torch.index_select(x, 0, index, out=reused[: len(index)])
        optimizer.zero_grad()
        F.cross_entropy(model(inputs), y[index]).backward()
        optimizer.step()
    if x.is_cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - wall, time.process_time() - cpu, len(x)


def classic_epoch(loader, device: torch.device, model, optimizer):
    wall, cpu = time.perf_counter(), time.process_time()
    samples = 0
    for images, labels in loader:
        images, labels = images.to(device), labels.to(device)
        optimizer.zero_grad()
        F.cross_entropy(model(images.view(len(images), -1)), labels).backward()
        optimizer.step()
        samples += len(labels)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - wall, time.process_time() - cpu, samples


def memory_peak_reset() -> None:
    """Reset the kernel's peak-RSS counter of this process (Linux); VmHWM then restarts."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def memory_now() -> dict[str, float]:
    """Peak and current RSS (MiB) from /proc/self/status, and CUDA peak allocation if any."""
    out: dict[str, float] = {}
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmHWM", "VmRSS"):
                out[key] = int(value.split()[0]) / 1024
    except OSError:
        pass
    if torch.cuda.is_available():
        out["cuda_peak_allocated"] = torch.cuda.max_memory_allocated() / 2**20
    return out
