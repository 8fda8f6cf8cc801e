"""Training throughput in one process: (a) a raw PyTorch loop, (b) the classic tutorial loop,
(c) the pipeline's own training path, MLflow metric writes on and off. See README ("Speed").

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

All three use the same model (784-200-10, ReLU), SGD lr 0.01 momentum 0.9, thread count and
samples. The loops run interleaved, one repetition of each in turn ((a) both first and last), so
that a machine shared with other work slows them alike; ratios are taken within a repetition and
their median reported.
Besides wall-clock samples/s, the CPU-time ratio (process CPU seconds per epoch) is reported: it
is much less sensitive to other processes on the machine.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import open_dict

import pipeline
from pipeline import tracking
from pipeline.callbacks import EpochTimer
from pipeline.data import load_local
from pipeline.model import MLP

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


class CpuEpochTimer(EpochTimer):
    """The pipeline's EpochTimer, also counting process CPU seconds over the same spans."""

    cpu: list[float] = []

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.cpu_start, self.cpu_elapsed = time.process_time(), 0.0
        super().on_train_epoch_start(trainer, pl_module)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.start is None:
            self.cpu_start = time.process_time()
        super().on_train_batch_start(trainer, pl_module, batch, batch_idx)

    def on_validation_start(self, trainer, pl_module) -> None:
        if self.start is not None:
            self.cpu_elapsed += time.process_time() - self.cpu_start
        super().on_validation_start(trainer, pl_module)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if self.start is not None:
            self.cpu_elapsed += time.process_time() - self.cpu_start
        CpuEpochTimer.cpu.append(self.cpu_elapsed)
        super().on_train_epoch_end(trainer, pl_module)


class TimedLogger(tracking.MlflowLogger):
    """The pipeline's MlflowLogger, timing its own work; `write=False` keeps only the history."""

    write = True
    last: TimedLogger | None = None

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.seconds = 0.0
        TimedLogger.last = self

    def log_metrics(self, metrics, step=None) -> None:
        start = time.perf_counter()
        if TimedLogger.write:
            super().log_metrics(metrics, step)
        else:
            for key, value in metrics.items():
                self.history[key].append((step or 0, float(value)))
        self.seconds += time.perf_counter() - start

    def flush(self) -> None:
        start = time.perf_counter()
        if TimedLogger.write:
            super().flush()
        self.seconds += time.perf_counter() - start


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


def pipeline_epochs(cfg_factory: Callable, batch_size: int, epochs: int, write: bool):
    """Run `train()`: its epoch times (wall, CPU) and the seconds its logger spent."""
    from pipeline import train as train_module

    cfg = cfg_factory(batch_size, epochs)
    TimedLogger.write, CpuEpochTimer.cpu = write, []
    saved = tracking.MlflowLogger, train_module.EpochTimer
    tracking.MlflowLogger, train_module.EpochTimer = TimedLogger, CpuEpochTimer
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # the per-epoch lines of EpochLine
            train_module.train(cfg)
    finally:
        tracking.MlflowLogger, train_module.EpochTimer = saved
    logger = TimedLogger.last
    walls = [value for _, value in logger.history["epoch_time_s"]]
    return walls, list(CpuEpochTimer.cpu), logger.seconds


# ---------------------------------------------------------------------------------------------
# The benchmark
# ---------------------------------------------------------------------------------------------


def machine() -> dict[str, str]:
    cpu = platform.processor() or platform.machine()
    try:
        names = [
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    info = {
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "load_average_at_start": " ".join(f"{v:.1f}" for v in os.getloadavg()),
        "torch": torch.__version__,
        "torch_threads": str(torch.get_num_threads()),
        "python": platform.python_version(),
        "date_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def compose_factory(root: Path, work: Path, device: str) -> Callable:
    from hydra import compose, initialize_config_dir

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
                walls, cpus, logger_s = pipeline_epochs(
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


def summarise(reps: list[dict]) -> dict:
    """Medians over repetitions: samples/s, and ratios to (a) taken within each repetition."""
    out = {}
    for name in LOOPS:
        rate = [r[name]["samples"] / r[name]["wall"] for r in reps]
        wall_ratio = [
            (r[name]["samples"] / r[name]["wall"]) / (r["a"]["samples"] / r["a"]["wall"])
            for r in reps
        ]
        cpu_ratio = [
            (r[name]["samples"] / r[name]["cpu"]) / (r["a"]["samples"] / r["a"]["cpu"])
            for r in reps
        ]
        out[name] = {
            "samples_per_s": statistics.median(rate),
            "ratio_to_a": statistics.median(wall_ratio),
            "cpu_ratio_to_a": statistics.median(cpu_ratio),
        }
        if name.startswith("c_"):
            out[name]["logger_share"] = statistics.median(r[name]["logger_share"] for r in reps)
        if name != "b":
            out[name]["ratio_to_b"] = statistics.median(
                (r[name]["samples"] / r[name]["wall"]) / (r["b"]["samples"] / r["b"]["wall"])
                for r in reps
            )
    return out


def markdown(results: dict) -> str:
    m = results["machine"]
    lines = [
        f"Measured {m['date_utc']} on {m['cpu']} ({m['cores']} cores"
        + (f", GPU {m['gpu']}" if "gpu" in m else "")
        + f"), torch {m['torch']}, {m['torch_threads']} torch thread(s); load average "
        f"{m['load_average_at_start']} at start, {m['load_average_at_end']} at end. "
        f"Data: {results['data']}. Median of {results['args']['reps']} interleaved repetitions; "
        "ratios are taken within a repetition.",
        "",
        "| batch | loop | samples/s | ratio to (a) | CPU-time ratio to (a) | ratio to (b) |",
        "|---:|---|---:|---:|---:|---:|",
    ]
    for batch_size, block in results["batch"].items():
        for name, label in LOOPS.items():
            s = block["summary"][name]
            to_b = f"{s['ratio_to_b']:.2f}" if "ratio_to_b" in s else "1.00"
            lines.append(
                f"| {batch_size} | {label} | {s['samples_per_s']:,.0f} | {s['ratio_to_a']:.2f} "
                f"| {s['cpu_ratio_to_a']:.2f} | {to_b} |"
            )
    lines.append("")
    for batch_size, block in results["batch"].items():
        s, peak = block["summary"], block["peak"]
        high, before = peak.get("VmHWM", float("nan")), peak.get("rss_before_c", float("nan"))
        memory = (
            f"the benchmark process's peak RSS while (c) ran: {high:,.0f} MiB (max over its runs; "
            f"RSS before the last one: {before:,.0f} MiB, which holds (a)'s and (b)'s data)"
        )
        if "cuda_peak_allocated" in peak:
            memory += f", CUDA peak allocated {peak['cuda_peak_allocated']:,.0f} MiB"
        share = 100 * s["c_on"]["logger_share"]
        lines.append(
            f"- batch {batch_size}: MLflow metric writes take {share:.1f}% of the pipeline's epoch "
            f"time (the logger's own time / epoch time); {memory}."
        )
    for sweep in results.get("sweeps", []):
        lines.append(
            "- `train.py -m experiment=optimizer_comparison seed=1` (6 optimizers x 5 epochs on "
            f"the same data, `hydra/launcher={sweep['launcher']}`): {sweep['seconds']:.0f} s for "
            "the whole command, start-up, data loading, validation, test and MLflow included."
        )
    return "\n".join(lines) + "\n"


README_START, README_END = "<!-- bench:start -->", "<!-- bench:end -->"


def update_readme(readme: Path, table: str) -> None:
    text = readme.read_text()
    start, end = text.index(README_START) + len(README_START), text.index(README_END)
    readme.write_text(text[:start] + "\n" + table + text[end:])


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[64, 512])
    parser.add_argument("--reps", type=int, default=5, help="interleaved repetitions")
    parser.add_argument("--epochs", type=int, default=3, help="epochs of (a), (c) per rep")
    parser.add_argument("--n", type=int, default=60_000, help="synthetic training samples")
    parser.add_argument("--data-root", help="real IDX files (as data.source=local reads them)")
    parser.add_argument("--data-name", default="mnist", choices=["mnist", "fashion_mnist"])
    parser.add_argument("--torch-threads", type=int, default=1)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--out", default=str(pipeline.PROJECT_ROOT / "scripts" / "results"))
    parser.add_argument("--update-readme", action="store_true", help="put the table in README.md")
    parser.add_argument("--sweep", action="store_true", help="also time one optimizer_comparison")
    parser.add_argument(
        "--sweep-launchers", nargs="+", default=["basic", "joblib"], choices=["basic", "joblib"]
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    import logging
    import warnings

    args = parse(argv)
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning_fabric").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    results = run(args)
    table = markdown(results)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.json").write_text(json.dumps(results, indent=1))
    (out / "bench.md").write_text(table)
    print("\n" + table + f"\nwritten: {out / 'bench.json'}, {out / 'bench.md'}")
    if args.update_readme:
        update_readme(pipeline.PROJECT_ROOT / "README.md", table)
    return results
