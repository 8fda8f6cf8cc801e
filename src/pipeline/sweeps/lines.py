"""What a sweep's job prints when it ends: one line each (the UI's address: tracking.store.see_it).

A sweep's jobs print no epoch lines (parallel jobs' lines would interleave with nothing to tell
them apart): each prints one line when it ends, written at once, so lines never mix mid-line.
"""

from __future__ import annotations

import math
import shlex
import sys
from pathlib import Path

from hydra.core.hydra_config import HydraConfig


def job_line(run_id: str, history: dict[str, list[tuple[int, float]]]) -> str:
    """'job 3 (optimizer=adam seed=2): MLflow run <id>, best val/acc 0.9120, test/acc 0.9050';
    no test/acc where the job did not test (a tuning trial)."""
    val = max((v for _, v in history.get("val/acc", [])), default=float("nan"))
    tests = [v for _, v in history.get("test/acc", []) if not math.isnan(v)]
    test = f", test/acc {tests[-1]:.4f}" if tests else ""
    return f"{job_label()}: MLflow run {run_id}, best val/acc {val:.4f}{test}"


def job_label() -> str:
    """'job 3 (optimizer=adam seed=2)': the job's number and what its sweep varies in it."""
    swept = " ".join(swept_overrides(list(HydraConfig.get().overrides.task)))
    return f"job {HydraConfig.get().job.num} ({swept})"


def swept_overrides(overrides: list[str]) -> list[str]:
    """The job's overrides that its sweep varies: not plumbing, not given as one fixed value
    on the sweep's command line (its multirun.yaml)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    from pipeline.sweeps.common import PLUMBING

    saved = Path(HydraConfig.get().sweep.dir) / "multirun.yaml"
    command = list(OmegaConf.load(saved).hydra.overrides.task) if saved.is_file() else []
    parsed = OverridesParser.create().parse_overrides(command)
    fixed = {o.get_key_element() for o in parsed if not o.is_sweep_override()}
    key = OverridesParser.create().parse_overrides
    return [
        o
        for o, p in zip(overrides, key(overrides), strict=True)
        if not o.lstrip("+~").startswith(PLUMBING) and p.get_key_element() not in fixed
    ]


def command_line() -> str:
    """This process's command as a user typed it (the sweep's process: not a job's worker)."""
    program, *args = sys.argv
    prefix = ["python"] if program.endswith(".py") else []
    return shlex.join([*prefix, program if prefix else Path(program).name, *args])
