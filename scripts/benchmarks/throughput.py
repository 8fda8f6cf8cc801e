"""Training throughput in one process (`scripts/bench.py`'s default): (a) a raw PyTorch loop,
(b) the classic tutorial loop, (c) the pipeline's own training path, MLflow metric writes on and
off. docs/performance.md.

All three use the same model (784-200-10, ReLU), SGD lr 0.01 momentum 0.9, thread count and
samples. The loops run interleaved, one repetition of each in turn ((a) both first and last), so
that a machine shared with other work slows them alike; ratios are taken within a repetition and
their median reported. Besides wall-clock samples/s, the CPU-time ratio (process CPU seconds per
epoch) is reported: it is much less sensitive to other processes on the machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from omegaconf import open_dict

import pipeline
from benchmarks.loops import (
    LOOPS,
    classic_epoch,
    memory_now,
    memory_peak_reset,
    new_model,
    raw_epoch,
    synthetic,
    write_mnist_layout,
)
from benchmarks.probes import pipeline_epochs
from benchmarks.summary import machine, summarise
from pipeline.config.resolvers import register_resolvers
from pipeline.data.sources import load_local


def compose_factory(root: Path, work: Path, device: str) -> Callable:
    from hydra import compose, initialize_config_dir

    register_resolvers()

    def make(batch_size: int, epochs: int):
        overrides = [
            "optimizer=momentum",
            "data.source=local",
            f"data.root={root}",
            f"data.batch_size={batch_size}",
            f"trainer.max_epochs={epochs}",
            f"tracking.uri=sqlite:///{work}/mlruns/mlflow.db",
            f"tracking.artifact_root={work}/mlruns/artifacts",
            "tracking.experiment=bench",
            "tracking.log_model=false",
            f"torch_threads={torch.get_num_threads()}",
        ]
        if device == "cuda":
            overrides.append("trainer=gpu")
        conf = str(pipeline.PROJECT_ROOT / "conf")
        with initialize_config_dir(version_base="1.3", config_dir=conf):
            cfg = compose("train", overrides=overrides)
        with open_dict(cfg):
            cfg.paths.output_dir = str(work / "out" / f"bs{batch_size}-{time.monotonic_ns()}")
        return cfg

    return make


def run(args: argparse.Namespace) -> dict:
    import torchvision
    from torch.utils.data import DataLoader
    from torchvision import transforms

    torch.set_num_threads(args.torch_threads)
    os.environ["OMP_NUM_THREADS"] = str(args.torch_threads)
    device = torch.device(args.device)
    work = Path(tempfile.mkdtemp(prefix="bench-"))
    if args.data_root:
        splits = load_local(Path(args.data_root), args.data_name)
        data_desc = f"{args.data_name} IDX files from {args.data_root}"
    else:
        splits = synthetic(args.n, max(args.n // 6, 100))
        data_desc = f"synthetic, MNIST shape: {args.n} x 784 uint8, 10 classes"
    write_mnist_layout(work / "data", splits)
    images, labels = splits["train"]
    x = ((torch.from_numpy(images.reshape(len(images), -1)).float() / 255 - 0.5) / 0.5).to(device)
    y = torch.from_numpy(labels.astype(np.int64)).to(device)
    normalise = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.5,), (0.5,))])
    dataset = torchvision.datasets.MNIST(str(work / "data"), train=True, transform=normalise)
    cfg_factory = compose_factory(work / "data", work, args.device)

    results: dict = {"machine": machine(), "data": data_desc, "args": vars(args), "batch": {}}
    print(f"data: {data_desc}; loops interleaved, {args.reps} repetitions", flush=True)
    for batch_size in args.batch_sizes:
        loader = DataLoader(dataset, batch_size=batch_size, shuffle=True)
        raw_model, buffer_model = new_model(device), new_model(device)
        classic_model = new_model(device)
        raw_epoch(x, y, batch_size, *raw_model)  # warm-up, not counted
        raw_epoch(x, y, batch_size, *buffer_model, buffer=True)
        reps: list[dict] = []
        peak: dict[str, float] = {}
        for rep in range(args.reps):
            row: dict = {}
            # (a) runs as many epochs as (c), once before and once after the others, and gives
            # the median of them all: one epoch of ~1 s is easily slowed by a neighbour on a
            # shared machine, and a host whose speed drifts during the repetition would
            # otherwise favour whichever loop ran first.
            raws = [raw_epoch(x, y, batch_size, *raw_model) for _ in range(args.epochs)]
            buffered = [
                raw_epoch(x, y, batch_size, *buffer_model, buffer=True) for _ in range(args.epochs)
            ]
            wall, cpu, n = (statistics.median(values) for values in zip(*buffered, strict=True))
            row["a_buf"] = {"wall": wall, "cpu": cpu, "samples": n}
            wall, cpu, n = classic_epoch(loader, device, *classic_model)
            row["b"] = {"wall": wall, "cpu": cpu, "samples": n}
            n_train = int(len(x) - round(0.1 * len(x)))  # data.val_size 0.1 of the same set
            order = ("c_on", "c_off") if rep % 2 == 0 else ("c_off", "c_on")
            for name in order:
                before = memory_now()
                memory_peak_reset()
                walls, cpus, logger_s, journal_s = pipeline_epochs(
                    cfg_factory, batch_size, args.epochs, write=name == "c_on"
                )
                after = memory_now()
                for key, value in after.items():
                    if key != "VmRSS":
                        peak[key] = max(peak.get(key, 0.0), value)
                peak["rss_before_c"] = before.get("VmRSS", 0.0)
                row[name] = {
                    "wall": statistics.median(walls),
                    "cpu": statistics.median(cpus),
                    "samples": n_train,
                    "epoch_walls": walls,
                    "logger_share": logger_s / sum(walls),
                    "journal_share": journal_s / sum(walls),
                    "journal_s_per_step": journal_s / (len(walls) * -(-n_train // batch_size)),
                }
            raws += [raw_epoch(x, y, batch_size, *raw_model) for _ in range(args.epochs)]
            wall, cpu, n = (statistics.median(values) for values in zip(*raws, strict=True))
            row["a"] = {"wall": wall, "cpu": cpu, "samples": n, "epoch_walls": [r[0] for r in raws]}
            reps.append(row)
            line = "  ".join(
                f"{name} {row[name]['samples'] / row[name]['wall']:,.0f}/s" for name in LOOPS
            )
            print(f"batch {batch_size} rep {rep + 1}/{args.reps}: {line}", flush=True)
        results["batch"][str(batch_size)] = {"reps": reps, "summary": summarise(reps), "peak": peak}
    if args.sweep:
        results["sweeps"] = [time_sweep(work, launcher) for launcher in args.sweep_launchers]
    results["machine"]["load_average_at_end"] = " ".join(f"{v:.1f}" for v in os.getloadavg())
    return results


def time_sweep(work: Path, launcher: str) -> dict:
    """Wall time of the whole `train.py -m experiment=optimizer_comparison seed=1` command (six
    optimizers, 5 epochs each) on the benchmark's full-size data, interpreter start included."""
    command = [
        sys.executable,
        str(pipeline.PROJECT_ROOT / "train.py"),
        "-m",
        "experiment=optimizer_comparison",
        "seed=1",
        f"hydra/launcher={launcher}",
        "data.source=local",
        f"data.root={work / 'data'}",
        f"tracking.uri=sqlite:///{work}/sweep-{launcher}/mlflow.db",
        f"tracking.artifact_root={work}/sweep-{launcher}/artifacts",
        f"hydra.sweep.dir={work}/sweep-{launcher}/out",
    ]
    print(f"sweep: {' '.join(command[1:])}", flush=True)
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"the sweep failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return {"command": " ".join(command[1:]), "launcher": launcher, "jobs": 6, "seconds": seconds}
