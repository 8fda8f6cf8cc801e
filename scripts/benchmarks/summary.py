"""The machine, the medians over repetitions, and the Markdown table."""

from __future__ import annotations

import statistics

import torch

from benchmarks.loops import LOOPS
from benchmarks.startup import host  # torch-free: start-up runs without torch


def machine() -> dict[str, str]:
    info = {**host(), "torch": torch.__version__, "torch_threads": str(torch.get_num_threads())}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


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
            for key in ("logger_share", "journal_share", "journal_s_per_step"):
                out[name][key] = statistics.median(r[name].get(key, 0.0) for r in reps)
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
        journal = 100 * s["c_on"]["journal_share"]
        lines.append(
            f"- batch {batch_size}: MLflow metric writes take {share:.1f}% of the pipeline's epoch "
            f"time (the logger's own time / epoch time), the run's journal (appends and the "
            f"fsync before each checkpoint, on the training thread) {journal:.2f}% "
            f"({1e6 * s['c_on']['journal_s_per_step']:.1f} µs per step); {memory}."
        )
    for sweep in results.get("sweeps", []):
        lines.append(
            "- `train.py -m experiment=optimizer_comparison seed=1` (6 optimizers x 5 epochs on "
            f"the same data, `hydra/launcher={sweep['launcher']}`): {sweep['seconds']:.0f} s for "
            "the whole command, start-up, data loading, validation, test and MLflow included."
        )
    return "\n".join(lines) + "\n"
