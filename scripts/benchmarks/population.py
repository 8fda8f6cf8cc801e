"""`python scripts/bench.py population`: member-samples/s of a population against the raw
single-model loop (docs/performance.md, docs/populations.md).

Both train the MLP 784-200-10 with SGD momentum (lr 0.01, 0.9) at batch 64 on the same
MNIST-shaped tensors (synthetic by default), one torch thread, no Lightning and no MLflow:

  raw         loops.raw_epoch's step with a reused input buffer: one model, torch.optim.SGD
  population  the population's own step (pipeline.population): each member's minibatch cut
              in its own order (data.MemberGroups), the stacked MLP, each member's loss,
              the stacked SGD (pipeline.optim.stacked); K members per step

Each measurement times `--steps` steps after a warm-up; rounds interleave raw and every K, and
the table gives each one's median member-samples/s, its ratio to raw's, and the peak RSS.

`--pipeline` adds the whole training path, once per K: `train_population` (Lightning, each
member's MLflow run) against `train` (one run), both on the same data written as IDX files, one
epoch of `--pipeline-steps` optimizer steps; member-samples/s from the recorded `epoch_time_s`.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import pipeline
from benchmarks.loops import LR, MOMENTUM, memory_now, memory_peak_reset, new_model
from benchmarks.main import write
from pipeline.model.mlp import MLP
from pipeline.optim.stacked import SGD
from pipeline.population.data import MemberGroups
from pipeline.population.model import StackedMLP, member_losses

WARMUP = 5


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench.py population", description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 8, 32, 128])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--n", type=int, default=60_000, help="synthetic training samples")
    parser.add_argument(
        "--data", default="synthetic", help="synthetic, or a conf/data option (fashion_mnist)"
    )
    parser.add_argument("--steps", type=int, default=200, help="timed steps per measurement")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--torch-threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="32-true", choices=["32-true", "bf16-mixed"])
    parser.add_argument("--out", default=str(pipeline.PROJECT_ROOT / "outputs" / "bench"))
    parser.add_argument("--pipeline", action="store_true", help="also the whole training path")
    parser.add_argument("--pipeline-steps", type=int, default=256)
    return parser.parse_args(argv)


def autocast(x: torch.Tensor, precision: str):
    """The forward pass under bf16 autocast (as Lightning's bf16-mixed), or as it is."""
    import contextlib

    if precision == "bf16-mixed":
        return torch.autocast(x.device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def raw_rate(x, y, batch_size: int, steps: int, precision: str = "32-true") -> tuple[float, float]:
    model, optimizer = new_model(x.device)
    order = torch.randperm(len(x), device=x.device)
    buffer = x.new_empty((batch_size, x.shape[1]))
    start = cpu = 0.0
    for s in range(WARMUP + steps):
        if s == WARMUP:
            sync(x)
            start, cpu = time.perf_counter(), time.process_time()
        index = order[(s * batch_size) % len(x) :][:batch_size]
        inputs = torch.index_select(x, 0, index, out=buffer[: len(index)])
        optimizer.zero_grad()
        with autocast(x, precision):
            loss = F.cross_entropy(model(inputs), y[index])
        loss.backward()
        optimizer.step()
    sync(x)
    samples = steps * batch_size
    return samples / (time.perf_counter() - start), samples / (time.process_time() - cpu)


def population_rate(
    x, y, batch_size: int, k: int, steps: int, precision: str = "32-true"
) -> tuple[float, float]:
    net = StackedMLP([MLP(784, [200], 10, "relu") for _ in range(k)]).to(x.device)
    hypers = {"lr": [LR] * k, "momentum": [MOMENTUM] * k, "dampening": [0.0] * k}
    optimizer = SGD(net.parameters(), {**hypers, "weight_decay": [0.0] * k, "nesterov": [0] * k})
    groups = MemberGroups(x, y, list(range(k)), batch_size, size=WARMUP + steps)
    done, start, cpu = 0, 0.0, 0.0
    while done < WARMUP + steps:
        for group in groups:  # one group of all the steps, or an epoch's worth at a time
            for xs, ys in group:
                if done == WARMUP:
                    sync(x)
                    start, cpu = time.perf_counter(), time.process_time()
                optimizer.zero_grad()
                with autocast(x, precision):
                    losses = member_losses(net(xs), ys, "cross_entropy")
                losses.float().sum().backward()
                optimizer.step()
                done += 1
                if done == WARMUP + steps:
                    break
            if done == WARMUP + steps:
                break
    sync(x)
    samples = steps * batch_size * k
    return samples / (time.perf_counter() - start), samples / (time.process_time() - cpu)


def pipeline_rates(args: argparse.Namespace) -> dict[str, float]:
    """Member-samples/s of `train` (key "single") and of `train_population` per K."""
    import tempfile

    from omegaconf import open_dict

    from benchmarks.loops import synthetic, write_mnist_layout
    from benchmarks.throughput import compose_factory
    from pipeline.population.run import Member, train_population
    from pipeline.training.run import train

    work = Path(tempfile.mkdtemp(prefix="bench-population-"))
    write_mnist_layout(work / "data", synthetic(args.n, max(args.n // 6, 100)))
    make = compose_factory(work / "data", work, args.device)

    def cfg(seed: int):
        c = make(args.batch_size, 1)
        with open_dict(c):
            c.seed = seed
            c.trainer.limit_train_batches = args.pipeline_steps
            c.trainer.limit_val_batches = c.trainer.limit_test_batches = 10
            c.tracking.log_curves = False
        return c

    samples = args.pipeline_steps * args.batch_size
    single = train(cfg(0)).history["epoch_time_s"][0][1]
    rates = {"single": samples / single}
    for k in args.sizes:
        results = train_population([Member(cfg(seed)) for seed in range(k)], workdir=work / "pop")
        rates[str(k)] = k * samples / results[0].history["epoch_time_s"][0][1]
    return rates


def training_tensors(data: str, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`n` synthetic MNIST-shaped samples, or a data set's normalised training split as the
    pipeline loads it (`data` a conf/data option)."""
    if data == "synthetic":
        generator = torch.Generator().manual_seed(0)
        return torch.randn(n, 784, generator=generator), torch.randint(0, 10, (n,))
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from pipeline.config.resolvers import register_resolvers

    register_resolvers()
    with initialize_config_dir(version_base="1.3", config_dir=str(pipeline.CONFIG_DIR)):
        cfg = compose("train", [f"data={data}"])
    datamodule = instantiate(cfg.data)
    datamodule.load()
    x, y = datamodule.tensors["train"]
    return x.reshape(len(x), -1).float(), y


def sync(x: torch.Tensor) -> None:
    if x.is_cuda:
        torch.cuda.synchronize()


def main(argv: list[str]) -> dict:
    args = parse(argv)
    torch.set_num_threads(args.torch_threads)
    device = torch.device(args.device)
    x, y = training_tensors(args.data, args.n)
    x, y = x.to(device), y.to(device)
    # name -> per round (wall, CPU-time) member-samples/s
    rates: dict[str, list[tuple[float, float]]] = {"raw": [], **{str(k): [] for k in args.sizes}}
    peak: dict[str, float] = {}
    for _ in range(args.rounds):
        rates["raw"].append(raw_rate(x, y, args.batch_size, args.steps, args.precision))
        for k in args.sizes:
            memory_peak_reset()
            steps = max(20, args.steps // max(1, k // 8))  # a similar time per measurement
            rates[str(k)].append(population_rate(x, y, args.batch_size, k, steps, args.precision))
            peak[str(k)] = max(peak.get(str(k), 0.0), memory_now().get("VmHWM", 0.0))
    raw = statistics.median(r[0] for r in rates["raw"])
    raw_cpu = statistics.median(r[1] for r in rates["raw"])

    def row(k: str) -> dict[str, float]:
        # Ratios within a round (raw ran just before), then their median: a drifting host
        # favours neither loop.
        ratios = [(p[0] / r[0], p[1] / r[1]) for p, r in zip(rates[k], rates["raw"], strict=True)]
        return {
            "member_samples_per_s": statistics.median(p[0] for p in rates[k]),
            "ratio_to_raw": statistics.median(r[0] for r in ratios),
            "cpu_ratio_to_raw": statistics.median(r[1] for r in ratios),
            "peak_rss_mib": peak[k],
        }

    results = {
        "args": vars(args),
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "raw_samples_per_s": raw,
        "raw_cpu_samples_per_s": raw_cpu,
        "population": {k: row(k) for k in map(str, args.sizes)},
        "rates": rates,
    }
    if args.pipeline:
        rates = pipeline_rates(args)
        results["pipeline"] = {
            k: {"member_samples_per_s": v, "ratio_to_single": v / rates["single"]}
            for k, v in rates.items()
        }
    write(Path(args.out), "population", results, markdown(results))
    return results


def markdown(results: dict) -> str:
    a = results["args"]
    lines = [
        f"Population vs raw loop: batch {a['batch_size']}, {a['torch_threads']} thread(s), "
        f"{results['device']}, {a['precision']}, {a['data']} data, median of {a['rounds']} rounds",
        "",
        "| members K | member-samples/s | × raw loop | CPU-time × raw loop | peak RSS (MiB) |",
        "|---|---|---|---|---|",
        f"| raw loop (1 model) | {results['raw_samples_per_s']:,.0f} | 1.00 | 1.00 | |",
    ]
    for k, row in results["population"].items():
        lines.append(
            f"| {k} | {row['member_samples_per_s']:,.0f} | {row['ratio_to_raw']:.2f} | "
            f"{row['cpu_ratio_to_raw']:.2f} | {row['peak_rss_mib']:.0f} |"
        )
    if "pipeline" in results:
        lines += [
            "",
            f"Whole training path (Lightning, MLflow), one epoch of {a['pipeline_steps']} steps:",
            "",
            "| run | member-samples/s | × one run |",
            "|---|---|---|",
        ]
        for k, row in results["pipeline"].items():
            name = "one run (`train`)" if k == "single" else f"population of {k}"
            lines.append(
                f"| {name} | {row['member_samples_per_s']:,.0f} | {row['ratio_to_single']:.2f} |"
            )
    return "\n".join(lines) + "\n"
