"""Start-up: every command's `--help` and a default training run, as ratios to `import torch`,
and the run as a ratio to its stack's floor, `import pytorch_lightning, mlflow`.

Each command runs as a user starts it, in a new process, and is timed from start to exit (the
interpreter's exit included: a user waits for it too). The references are
`python -c "import torch"` and the floor `python -c "import pytorch_lightning, mlflow"` (what
any Lightning + MLflow program pays before its first line) on the same machine, timed in the
same round: a round runs every command once, in turn, and a command's ratio is the median over
rounds of its time over that round's reference, so that a machine shared with other work slows
all alike. `--help` is held to `import torch` (it must not load the stack), the run to the floor.

The training run is `pipeline-train data.source=embedded` (5 epochs on the embedded digits) into
a scratch store; one untimed run first creates the store, whose tables take seconds to make once.
"""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pipeline

HELP_GOAL = 1.5  # ratio to `import torch` (docs/performance.md)
RUN_GOAL = 1.5  # ratio to the floor, `import pytorch_lightning, mlflow`
REFERENCE = "import torch"
FLOOR = "import pytorch_lightning, mlflow"
TRAIN = "train (default run, embedded digits)"


@dataclass
class Command:
    name: str
    argv: list[str]
    goal: float | None  # the ratio it should stay under; None for the reference


def bin_path(name: str) -> list[str]:
    """An installed console script, next to this interpreter; `python -m pipeline` without one."""
    script = Path(sys.executable).parent / f"pipeline-{name}"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "pipeline", name]


def commands(store: Path, train_args: list[str]) -> list[Command]:
    python, scripts = sys.executable, pipeline.PROJECT_ROOT / "scripts"
    helps = [
        Command(f"pipeline-{name} --help", [*bin_path(name), "--help"], HELP_GOAL)
        for name in ("train", "compare", "landscape", "runs", "server")
    ]
    helps += [
        Command("python -m pipeline --help", [python, "-m", "pipeline", "--help"], HELP_GOAL),
        Command("scripts/bench.py --help", [python, str(scripts / "bench.py"), "-h"], HELP_GOAL),
        Command(
            "scripts/scratch_vs_torch.py --help",
            [python, str(scripts / "scratch_vs_torch.py"), "--help"],
            HELP_GOAL,
        ),
    ]
    train = [
        *bin_path("train"),
        "data.source=embedded",
        f"tracking.uri=sqlite:///{store}/mlflow.db",
        f"tracking.artifact_root={store}/artifacts",
        *train_args,
    ]
    return [
        Command(REFERENCE, [python, "-c", "import torch"], None),
        Command(FLOOR, [python, "-c", FLOOR], None),
        *helps,
        Command(TRAIN, train, RUN_GOAL),
    ]


def timed(command: Command, work: Path) -> float:
    """Wall seconds from start to exit; a command that fails stops the benchmark."""
    argv = command.argv
    if command.name == TRAIN:  # each run its own output folder (checkpoints)
        argv = [*argv, f"hydra.run.dir={work / 'runs' / str(time.monotonic_ns())}"]
    start = time.perf_counter()
    done = subprocess.run(argv, cwd=work, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(
            f"{command.name} exited {done.returncode}:\n{(done.stdout + done.stderr)[-3000:]}"
        )
    return seconds


def host() -> dict[str, str]:
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
    return {
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "python": platform.python_version(),
        "load_average_at_start": " ".join(f"{v:.1f}" for v in os.getloadavg()),
        "date_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


def run(reps: int, train_args: list[str]) -> dict:
    machine = host()
    work = Path(tempfile.mkdtemp(prefix="bench-startup-"))
    todo = commands(work / "mlruns", train_args)
    train = next(c for c in todo if c.name == TRAIN)
    print(f"start-up: {len(todo)} commands, {reps} round(s); store creation first", flush=True)
    timed(train, work)  # creates the store and the experiment: once per store, not per run
    times: dict[str, list[float]] = {c.name: [] for c in todo}
    for rep in range(reps):
        for command in todo:
            times[command.name].append(timed(command, work))
        print(
            f"round {rep + 1}/{reps}: {REFERENCE} {times[REFERENCE][-1]:.2f} s, "
            f"{FLOOR} {times[FLOOR][-1]:.2f} s, train {times[TRAIN][-1]:.2f} s",
            flush=True,
        )

    def ratio(name: str, reference: str) -> float:
        pairs = zip(times[name], times[reference], strict=True)
        return statistics.median(t / ref for t, ref in pairs)

    rows = []
    for command in todo:
        held_to = FLOOR if command.name == TRAIN else REFERENCE
        goal_ratio = ratio(command.name, held_to)
        rows.append(
            {
                "command": command.name,
                "argv": command.argv,
                "seconds": statistics.median(times[command.name]),
                "all_seconds": times[command.name],
                "ratio": ratio(command.name, REFERENCE),
                "ratio_to_floor": ratio(command.name, FLOOR),
                "goal": command.goal,
                "goal_against": held_to,
                "meets_goal": None if command.goal is None else goal_ratio <= command.goal,
            }
        )
    machine["load_average_at_end"] = " ".join(f"{v:.1f}" for v in os.getloadavg())
    return {"machine": machine, "reps": reps, "train_args": train_args, "commands": rows}


def markdown(results: dict) -> str:
    m = results["machine"]
    lines = [
        f"Measured {m['date_utc']} on {m['cpu']} ({m['cores']} cores), Python {m['python']}; load "
        f"average {m['load_average_at_start']} at start, {m['load_average_at_end']} at end. "
        f"Median of {results['reps']} round(s); ratios to `{REFERENCE}` in the same round.",
        "",
        f"| command | seconds | ratio to `{REFERENCE}` | ratio to `{FLOOR}` | goal |",
        "|---|---:|---:|---:|---|",
    ]
    for row in results["commands"]:
        goal = "—" if row["goal"] is None else f"≤ {row['goal']:g}× `{row['goal_against']}`"
        if row["meets_goal"] is False:
            goal += " (missed)"
        lines.append(
            f"| `{row['command']}` | {row['seconds']:.2f} | {row['ratio']:.2f} | "
            f"{row['ratio_to_floor']:.2f} | {goal} |"
        )
    return "\n".join(lines) + "\n"
