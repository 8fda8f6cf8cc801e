"""`python scripts/bench.py probe`: what the step probe (training.probe) costs a run.

Trains the pipeline's own `train()` (and, with `--population K`, `train_population` of K
members) for `--epochs` epochs at batch 64, once per probe setting plus once with the probe off,
settings interleaved over `--rounds` rounds after one warm-up fit. Per setting: the probe's own
seconds per epoch (its `measure` timed from outside) over the training seconds per epoch
(`epoch_time_s`, which the probe does not count), both from the same fit, and the wall time of
the whole fit relative to the probe off (noisy on a shared machine); medians over rounds.
Default data: full Fashion-MNIST from the Debian package's IDX files.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from omegaconf import open_dict

import pipeline
from benchmarks.main import write
from pipeline.config.resolvers import register_resolvers
from pipeline.training import probe as probe_module

SETTINGS = ["off", "25:1000", "50:1000", "100:1000", "50:2000", "100:2000", "200:2000"]


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench.py probe", description=__doc__)
    parser.add_argument("--data-root", default="/usr/share/datasets/fashion-mnist")
    parser.add_argument("--data-name", default="fashion_mnist")
    parser.add_argument("--data-source", default="local", help="embedded: the 5,000 digits")
    parser.add_argument("--settings", nargs="+", default=SETTINGS, help="EVERY:EXAMPLES or off")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--population", type=int, default=0, help="K members instead of one run")
    parser.add_argument("--out", default=str(pipeline.PROJECT_ROOT / "outputs" / "bench"))
    return parser.parse_args(argv)


def config(args, work: Path, setting: str, seed: int = 1):
    from hydra import compose, initialize_config_dir

    register_resolvers()
    every, examples = (0, 2000) if setting == "off" else map(int, setting.split(":"))
    overrides = [
        "optimizer=momentum",
        f"data={args.data_name}",
        f"data.source={args.data_source}",
        f"data.root={args.data_root}",
        f"trainer.max_epochs={args.epochs}",
        f"tracking.uri=sqlite:///{work}/mlruns/mlflow.db",
        f"tracking.artifact_root={work}/mlruns/artifacts",
        "tracking.experiment=bench-probe",
        "tracking.log_model=false",
        "tracking.log_curves=false",
        f"probe.every_n_steps={every}",
        f"probe.examples={examples}",
        f"seed={seed}",
    ]
    with initialize_config_dir(version_base="1.3", config_dir=str(pipeline.PROJECT_ROOT / "conf")):
        cfg = compose("train", overrides=overrides)
    with open_dict(cfg):
        cfg.paths.output_dir = str(work / "out" / f"{setting}-{time.monotonic_ns()}")
    return cfg


def fit(args, work: Path, setting: str) -> dict[str, float]:
    """One fit: wall seconds, training seconds per epoch, probe seconds per epoch."""
    from pipeline.population.run import Member, train_population
    from pipeline.training.run import train

    spent = [0.0]
    measure = probe_module.Probe.measure

    def timed(self, trainer, forward):
        start = time.perf_counter()
        try:
            return measure(self, trainer, forward)
        finally:
            spent[0] += time.perf_counter() - start

    probe_module.Probe.measure = timed
    start = time.perf_counter()
    try:
        if args.population:
            members = [Member(config(args, work, setting, k + 1)) for k in range(args.population)]
            history = train_population(members, workdir=work / "pop")[0].history
        else:
            history = train(config(args, work, setting)).history
    finally:
        probe_module.Probe.measure = measure
    wall = time.perf_counter() - start
    epochs = [v for _, v in history["epoch_time_s"]]
    return {
        "wall_s": wall,
        "epoch_s": statistics.median(epochs),
        "probe_s_per_epoch": spent[0] / len(epochs),
        "probes": len(history.get(probe_module.ACC_KEY, [])),
    }


def main(argv: list[str]) -> dict:
    args = parse(argv)
    work = Path(args.out) / "probe-work"
    work.mkdir(parents=True, exist_ok=True)
    results: dict[str, list[dict]] = {s: [] for s in args.settings}
    fit(args, work, args.settings[0])  # warm-up: the data's first load, imports, the store
    for r in range(args.rounds):
        for setting in args.settings if r % 2 == 0 else reversed(args.settings):
            results[setting].append(fit(args, work, setting))
    base = statistics.median(x["wall_s"] for x in results.get("off", [])) if "off" in results else 0
    lines = [
        "| probe (every N steps : examples) | probes per run | training s/epoch | probe s/epoch "
        "| probe / training | fit wall time vs off |",
        "|---|---|---|---|---|---|",
    ]
    summary = {}
    for setting, runs in results.items():
        med = {k: statistics.median(x[k] for x in runs) for k in runs[0]}
        share = med["probe_s_per_epoch"] / med["epoch_s"]
        wall = f"{med['wall_s'] / base:.3f}×" if base else "—"
        lines.append(
            f"| {setting} | {med['probes']:.0f} | {med['epoch_s']:.2f} | "
            f"{med['probe_s_per_epoch']:.3f} | {100 * share:.1f}% | {wall} |"
        )
        summary[setting] = {**med, "probe_share": share}
    text = "\n".join(lines)
    write(Path(args.out), "probe", {"args": vars(args), "results": summary}, text)
    return summary
