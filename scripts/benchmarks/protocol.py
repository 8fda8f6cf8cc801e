"""Wall time of the fair-comparison protocol and where it goes (docs/performance.md).

Runs `train.py -m experiment=fair_comparison` (default: its default budget, on full-size
Fashion-MNIST) into a scratch store, then reads every child run back from MLflow:

  training    the runs' `epoch_time_s` summed: the optimizer steps (forward, backward, step,
              minibatch cutting); validation and checkpoints are outside it
  in runs     each run's start to end, minus its training: validation, test, checkpoints,
              model logging, the curves figure, MLflow writes
  between     the rest of the command's core-seconds (wall x parallel jobs): interpreter and
              worker start, composing each job's config, the study's bookkeeping, the report

Shares are of the command's core-seconds, so that one and two parallel jobs compare.
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


def run_protocol(out: Path, launcher: str, n_jobs: int, overrides: list[str]) -> dict:
    store = out / "store"
    command = [
        sys.executable,
        str(pipeline.PROJECT_ROOT / "train.py"),
        "-m",
        "experiment=fair_comparison",
        f"hydra/launcher={launcher}",
        f"hydra.sweeper.n_jobs={n_jobs}",
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
    """Runs, runs/min and the shares of core-seconds, from what MLflow recorded."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{store}/mlflow.db")
    experiment = client.get_experiment_by_name("mnist-optimizers")
    runs = client.search_runs([experiment.experiment_id], "tags.`mlflow.parentRunId` != ''")
    training = in_runs = 0.0
    stages: dict[str, int] = {}
    for run in runs:
        epochs = client.get_metric_history(run.info.run_id, "epoch_time_s")
        trained = sum(m.value for m in epochs)
        training += trained
        in_runs += (run.info.end_time - run.info.start_time) / 1000 - trained
        stage = run.data.tags.get("protocol.stage", "?")
        stages[stage] = stages.get(stage, 0) + 1
    core_s = wall_s * parallel
    return {
        "runs": len(runs),
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
            "| wall | runs | runs/min | training | in runs, outside training | between runs |",
            "|---:|---:|---:|---:|---:|---:|",
            f"| {result['wall_s'] / 60:.1f} min | {b['runs']} | {b['runs_per_min']:.1f} "
            f"| {b['share_training']:.0%} | {b['share_in_runs']:.0%} | {b['share_between']:.0%} |",
            "",
            f"Outside training: {b['per_run_outside_training_s']:.2f} core-s per run. "
            f"Load average at the end: {result['load_average_at_end']}.",
            "",
        ]
    )


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="bench.py protocol", description=__doc__.split("\n")[0])
    parser.add_argument("--launcher", default="joblib", choices=["basic", "joblib"])
    parser.add_argument("--n-jobs", type=int, default=2, help="jobs at a time (hydra.sweeper)")
    parser.add_argument("--out", default=str(pipeline.PROJECT_ROOT / "outputs" / "bench-protocol"))
    parser.add_argument(
        "overrides", nargs="*", default=["data=fashion_mnist"], help="more train.py overrides"
    )
    args = parser.parse_args(argv)
    out = Path(args.out)
    if (out / "store").exists():
        raise SystemExit(f"error: {out}/store exists; give another --out or remove it")
    out.mkdir(parents=True, exist_ok=True)
    result = run_protocol(out, args.launcher, args.n_jobs, args.overrides)
    parallel = args.n_jobs if args.launcher == "joblib" else 1
    result["parallel_jobs"] = parallel
    result["cpus"] = os.cpu_count()
    result["breakdown"] = breakdown(result["store"], result["wall_s"], parallel)
    result["load_average_at_end"] = " ".join(f"{v:.1f}" for v in os.getloadavg())
    (out / "protocol.json").write_text(json.dumps(result, indent=1))
    table = markdown(result)
    (out / "protocol.md").write_text(table)
    print(
        "\n" + table + f"written: {out / 'protocol.json'}, {out / 'protocol.md'}; report in "
        f"{out / 'sweep' / 'report'}"
    )
    return result
