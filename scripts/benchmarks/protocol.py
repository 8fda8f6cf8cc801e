"""Wall time of the fair-comparison protocol and where it goes (docs/performance.md).

Runs `train.py -m experiment=fair_comparison` (default: its default budget, on full-size
Fashion-MNIST) into a scratch store, then reads every child run back from MLflow:

  training    the runs' `epoch_time_s` summed: the optimizer steps (forward, backward, step,
              minibatch cutting); validation and checkpoints are outside it
  in runs     each run's start to end, minus its training: validation, test, checkpoints,
              model logging, the curves figure, MLflow writes
  between     the rest of the command's core-seconds (wall x parallel jobs): interpreter and
              worker start, composing each job's config, the study's bookkeeping, the report

Shares are of the command's core-seconds (wall x the cores it may use), so that launchers
compare. A population member's `epoch_time_s` is its population's epoch: counted once per
population, times the threads it trained with (`torch.threads`).

The limit: every member-sample the runs trained, at the raw single-model loop's rate
(benchmarks.population.raw_rate: one model, SGD momentum, batch 64, one thread, measured
before the protocol in the same command) on every core; `x limit` is the wall over it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pipeline
from pipeline.sweeps.workers import cpu_cores


def raw_samples_per_s(steps: int = 3000) -> float:
    """The raw loop's samples/s on one thread (median of 3), MNIST-shaped tensors."""
    import torch

    from benchmarks.population import raw_rate

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(60_000, 784, generator=generator)
    y = torch.randint(0, 10, (60_000,), generator=generator)
    rates = sorted(raw_rate(x, y, 64, steps)[0] for _ in range(3))
    torch.set_num_threads(threads)
    return rates[1]


def run_protocol(out: Path, launcher: str, n_jobs: int | None, overrides: list[str]) -> dict:
    store = out / "store"
    command = [
        sys.executable,
        str(pipeline.PROJECT_ROOT / "train.py"),
        "-m",
        "experiment=fair_comparison",
        f"hydra/launcher={launcher}",
        *([f"hydra.sweeper.n_jobs={n_jobs}"] if n_jobs else []),
        f"tracking.uri=sqlite:///{store}/mlflow.db",
        f"tracking.artifact_root={store}/artifacts",
        f"hydra.sweep.dir={out / 'sweep'}",
        *overrides,
    ]
    print(f"protocol: {' '.join(command[1:])}", flush=True)
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    wall = time.perf_counter() - start
    (out / "protocol.log").write_text(done.stdout + done.stderr)
    if done.returncode != 0:
        raise RuntimeError(f"the protocol failed (exit {done.returncode}): see {out}/protocol.log")
    return {"command": " ".join(command[1:]), "wall_s": wall, "store": str(store)}


def breakdown(store: str, wall_s: float, parallel: int) -> dict:
    """Runs, runs/min, member-samples and the shares of core-seconds, from what MLflow recorded."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{store}/mlflow.db")
    experiment = client.get_experiment_by_name("mnist-optimizers")
    runs = client.search_runs(
        [experiment.experiment_id], "tags.`mlflow.parentRunId` != ''", max_results=50_000
    )
    training = in_runs = 0.0
    samples = 0
    stages: dict[str, int] = {}
    # a population's members share one epoch clock and one span: (training, start, end, threads)
    units: dict[str, tuple[float, int, int, int]] = {}
    populations: set[str] = set()
    for run in runs:
        epochs = client.get_metric_history(run.info.run_id, "epoch_time_s")
        trained = sum(m.value for m in epochs)
        samples += len(epochs) * int(run.data.tags.get("data.train_size", 0))
        unit = run.data.tags.get("population", run.info.run_id)
        if "population" in run.data.tags:
            populations.add(unit)
        start, end = run.info.start_time, run.info.end_time
        threads = int(run.data.tags.get("torch.threads", 1))
        if unit in units:
            _, first, last, _ = units[unit]
            start, end = min(start, first), max(end, last)
        units[unit] = (trained, start, end, threads)
        stage = run.data.tags.get("protocol.stage", "?")
        stages[stage] = stages.get(stage, 0) + 1
    for trained, start, end, threads in units.values():
        training += trained * threads
        in_runs += ((end - start) / 1000 - trained) * threads
    core_s = wall_s * parallel
    return {
        "runs": len(runs),
        "populations": len(populations),
        "member_samples": samples,
        "stages": stages,
        "runs_per_min": len(runs) / (wall_s / 60),
        "training_s": training,
        "in_runs_s": in_runs,
        "between_s": core_s - training - in_runs,
        "share_training": training / core_s,
        "share_in_runs": in_runs / core_s,
        "share_between": 1 - (training + in_runs) / core_s,
        "per_run_outside_training_s": (core_s - training) / max(len(runs), 1),
    }


def markdown(result: dict) -> str:
    b = result["breakdown"]
    return "\n".join(
        [
            f"`{result['command']}`",
            "",
            "| wall | runs | runs/min | training | in runs, outside training | between runs "
            "| limit | × limit |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|",
            f"| {result['wall_s'] / 60:.1f} min | {b['runs']} | {b['runs_per_min']:.1f} "
            f"| {b['share_training']:.0%} | {b['share_in_runs']:.0%} | {b['share_between']:.0%} "
            f"| {result['limit_s'] / 60:.1f} min | {result['wall_s'] / result['limit_s']:.2f} |",
            "",
            f"Launcher {result['launcher']}, {b['populations']} populations; "
            f"{b['member_samples']:,} member-samples; the raw loop "
            f"{result['raw_samples_per_s']:,.0f} samples/s on one thread, {result['cpus']} cores.",
            "",
            f"Outside training: {b['per_run_outside_training_s']:.2f} core-s per run. "
            f"Load average at the end: {result['load_average_at_end']}.",
            "",
        ]
    )


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="bench.py protocol", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--launcher", default="population", choices=["population", "basic", "joblib"]
    )
    parser.add_argument(
        "--n-jobs", type=int, default=None, help="jobs per batch (default: the experiment's)"
    )
    parser.add_argument("--raw-steps", type=int, default=3000, help="steps per raw-loop timing")
    parser.add_argument("--out", default=str(pipeline.PROJECT_ROOT / "outputs" / "bench-protocol"))
    parser.add_argument(
        "overrides", nargs="*", default=["data=fashion_mnist"], help="more train.py overrides"
    )
    args = parser.parse_args(argv)
    out = Path(args.out)
    if (out / "store").exists():
        raise SystemExit(f"error: {out}/store exists; give another --out or remove it")
    out.mkdir(parents=True, exist_ok=True)
    raw = raw_samples_per_s(args.raw_steps)
    result = run_protocol(out, args.launcher, args.n_jobs, args.overrides)
    result["launcher"], result["cpus"] = args.launcher, cpu_cores()
    # the cores the command may use: joblib's workers or a population's threads; basic: one
    parallel = 1 if args.launcher == "basic" else result["cpus"]
    if args.launcher == "joblib" and args.n_jobs:
        parallel = min(parallel, args.n_jobs)
    result["parallel_jobs"] = parallel
    result["breakdown"] = breakdown(result["store"], result["wall_s"], parallel)
    result["raw_samples_per_s"] = raw
    result["limit_s"] = result["breakdown"]["member_samples"] / (raw * result["cpus"])
    result["load_average_at_end"] = " ".join(f"{v:.1f}" for v in os.getloadavg())
    (out / "protocol.json").write_text(json.dumps(result, indent=1))
    table = markdown(result)
    (out / "protocol.md").write_text(table)
    print(
        "\n" + table + f"written: {out / 'protocol.json'}, {out / 'protocol.md'}; report in "
        f"{out / 'sweep' / 'report'}"
    )
    return result
