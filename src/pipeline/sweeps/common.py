"""What a sweep's runs share: the tags that tie children to their parent, and reading them back.

Loaded with Hydra's callbacks for every command, single runs included: MLflow is imported where
it is used, so that bad input is refused before it loads.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import struct
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode

from pipeline.tracking.status import Status
from pipeline.tracking.tags import DIVERGED_LOSS_TAG, DIVERGED_STEP_TAG, DIVERGED_TAG, ERROR_TAG

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

PARENT_FILE = "mlflow_parent_run_id"  # in the sweep folder
ROLE_TAG = "sweep.role"  # "parent" on the sweep's run
JOB_TAG = "sweep.job"  # Hydra's job number, on each child
JOB_KEY_TAG = "sweep.job_key"  # what the job is (its overrides): found again by a resumed sweep
KEY_TAG = "sweep.key"  # on the parent: what the sweep is (sweeps.identity), found again likewise
# Overrides that only say where things go; left out of run names and of the swept keys.
PLUMBING = ("tracking.", "paths.", "hydra.", "hydra/")


def new_report_folder(client: MlflowClient, parent_id: str, folder: Path) -> tuple[str, Path]:
    """A new report's name and local folder: report, then report-2, ... - the first name free
    among the parent run's artifacts, the names other processes reserved (sweeps.claims) and
    under `folder` (created, never reused). A stored report is a record: a second report on the
    same parent never replaces the first, also when both are written at once."""
    from pipeline.sweeps.claims import reserved_names

    with reserved_names(client.tracking_uri, parent_id) as reserved:
        taken = {f.path for f in client.list_artifacts(parent_id)} | reserved
        for n in itertools.count(1):
            name = "report" if n == 1 else f"report-{n}"
            if name in taken:
                continue
            try:
                (folder / name).mkdir(parents=True)  # atomic: a folder made by another is taken
            except FileExistsError:
                continue
            reserved.add(name)
            return name, folder / name
    raise AssertionError("unreachable")


def in_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def parent_run_id() -> str | None:
    """The parent run of the current multirun job, or None (single run, or no sweep callback)."""
    if not in_multirun():
        return None
    path = Path(HydraConfig.get().sweep.dir) / PARENT_FILE
    return path.read_text().strip() if path.is_file() else None


def job_key(overrides: list[str]) -> str:
    """A job's identity within its sweep: its overrides, Hydra's own (where and how) left out."""
    what = sorted(o for o in overrides if not o.lstrip("+~").startswith(("hydra.", "hydra/")))
    return hashlib.sha256("\n".join(what).encode()).hexdigest()[:20]


def job_tags() -> dict[str, str]:
    """Tags that tie a child run to its Hydra job."""
    if not in_multirun():
        return {}
    hydra = HydraConfig.get()
    return {JOB_TAG: str(hydra.job.num), JOB_KEY_TAG: job_key(list(hydra.overrides.task))}


def children(client: MlflowClient, parent_id: str) -> list:
    """The parent's child runs, oldest first; deleted ones (a resumed sweep deletes a killed run
    it cannot continue, sweeps.jobs) left out."""
    from mlflow.entities import ViewType

    experiment_id = client.get_run(parent_id).info.experiment_id
    return client.search_runs(
        [experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{parent_id}'",
        run_view_type=ViewType.ACTIVE_ONLY,
        max_results=50_000,
        order_by=["attributes.start_time ASC"],
    )


def is_diverged(run: Any) -> bool:
    return run.data.tags.get(DIVERGED_TAG, "").lower() == "true"


def count_jobs(runs: list) -> dict[str, int]:
    """jobs = child runs; interrupted = KILLED or still RUNNING (the same command continues
    them); failed = every other child not FINISHED (diverged ones included)."""
    finished = sum(r.info.status == Status.FINISHED for r in runs)
    interrupted = sum(r.info.status in (Status.KILLED, Status.RUNNING) for r in runs)
    return {
        "jobs": len(runs),
        "finished": finished,
        "failed": len(runs) - finished - interrupted,
        "diverged": sum(is_diverged(r) for r in runs),
        "interrupted": interrupted,
    }


class SweeperKind(Enum):
    """What kind of sweep a `hydra.sweeper._target_` runs."""

    GRID = "grid"  # Hydra's BasicSweeper: every combination of the overrides
    SEARCH = "search"  # hparams_search: sweeps/search/sweeper.py
    PROTOCOL = "protocol"  # experiment=fair_comparison: sweeps/protocol/sweeper.py
    OTHER = "other"  # another plugin's sweeper

    @classmethod
    def of(cls, sweeper_target: object) -> SweeperKind:
        name = str(sweeper_target).rsplit(".", 1)[-1]
        kinds = {"BasicSweeper": cls.GRID, "OptunaSweeper": cls.SEARCH}
        return cls.PROTOCOL if name == "ProtocolSweeper" else kinds.get(name, cls.OTHER)

    @property
    def trials_are_results(self) -> bool:
        """A search over a wide range expects some trials to fail or diverge: they are results
        and do not fail the sweep."""
        return self in (SweeperKind.SEARCH, SweeperKind.PROTOCOL)


def trials_are_results(sweeper_target: str) -> bool:
    return SweeperKind.of(sweeper_target).trials_are_results


def sweep_summary(
    status: str,
    counts: dict[str, int],
    sweeper_target: str,
    parent_id: str,
    best: str = "",
    done_before: int = 0,
) -> str:
    """The sweep's last line, in words that match its exit status: a search that ran to its end
    finished (exit 0), whatever share of its trials failed or diverged. `best`: what a search
    selected (best_setting); `done_before`: jobs that an earlier run of the command had ended,
    not run again."""
    again = f"; {done_before} of them done before, not run again" if done_before else ""
    if not (status == Status.FINISHED and trials_are_results(sweeper_target)):
        shown = {k: v for k, v in counts.items() if v or k != "interrupted"}
        summary = ", ".join(f"{v} {k}" for k, v in shown.items())
        return f"Sweep {status}: parent MLflow run {parent_id} ({summary}{again})"
    protocol = SweeperKind.of(sweeper_target) == SweeperKind.PROTOCOL
    parts = [f"{counts['jobs']} {'runs' if protocol else 'trials'}", f"{counts['finished']} ok"]
    others = counts["failed"] - counts["diverged"]
    parts += [f"{counts['diverged']} diverged"] if counts["diverged"] else []
    parts += [f"{others} failed"] if others else []
    parts += [f"{n} interrupted"] if (n := counts.get("interrupted", 0)) else []
    note = " (counted as failed trials)" if counts["failed"] else ""
    note += f" ({done_before} done before, not run again)" if done_before else ""
    what = "Fair comparison" if protocol else "Search"
    best = f"; best {best}" if best else ""
    return f"{what} finished: {', '.join(parts)}{note}{best}; parent MLflow run {parent_id}"


def best_setting(params: dict[str, Any], value: float | None, metric: str = "val/acc") -> str:
    """'optimizer.lr=0.00075 (val/acc 0.7800)': a search's selected setting, in words."""
    setting = " ".join(f"{k}={fmt_value(str(v))}" for k, v in params.items())
    return setting + (f" ({metric} {value:.4f})" if value is not None else "")


CURVES = ("train/loss", "val/acc", "epoch_time_s", "train/loss_epoch")
NO_SWEPT_KEY = "optimizer"  # a sweep over seeds only: one row per optimizer


@dataclass
class RunData:
    run_id: str
    name: str
    status: str  # FINISHED, FAILED, KILLED, RUNNING, or DIVERGED (status FAILED + tag)
    overrides: dict[str, str]
    test_acc: float
    curves: dict[str, list[tuple[int, float]]]
    optimizer: str
    error: str = ""
    diverged_at: tuple[int, float] | None = None  # (step, training loss) where it was stopped

    def key(self, keys: list[str]) -> tuple[str, ...]:
        """The run's values of the swept keys (its optimizer when only seeds were swept)."""
        if keys == [NO_SWEPT_KEY] and NO_SWEPT_KEY not in self.overrides:
            return (self.optimizer,)
        return tuple(self.overrides.get(k, "") for k in keys)


def parse_overrides(text: str) -> dict[str, str]:
    """'optimizer=adam seed=1 +x=2' -> {'optimizer': 'adam', 'seed': '1', 'x': '2'}."""
    pairs = (item.lstrip("+~").partition("=") for item in text.split())
    return {k: v for k, _, v in pairs if not k.startswith(PLUMBING)}


def load_runs(client: MlflowClient, parent_id: str) -> list[RunData]:
    runs = []
    for run in children(client, parent_id):
        run_id, status = run.info.run_id, run.info.status
        status = "DIVERGED" if is_diverged(run) else status
        curves = {}
        for key in CURVES:
            points = sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)
            curves[key] = [(m.step, m.value) for m in points]
        runs.append(
            RunData(
                run_id=run_id,
                name=run.info.run_name or run_id,
                status=status,
                overrides=parse_overrides(run.data.tags.get("overrides", "")),
                test_acc=run.data.metrics.get("test/acc", math.nan),
                curves=curves,
                optimizer=run.data.tags.get("optimizer", "?"),
                error="" if status == Status.FINISHED else run.data.tags.get(ERROR_TAG, ""),
                diverged_at=diverged_at(run.data.tags) if status == "DIVERGED" else None,
            )
        )
    return runs


def diverged_at(tags: dict[str, str]) -> tuple[int, float] | None:
    """(step, loss) a diverged run was stopped at, from its tags (untrusted: None if unreadable)."""
    try:
        return int(tags[DIVERGED_STEP_TAG]), float(tags[DIVERGED_LOSS_TAG])
    except (KeyError, ValueError):
        return None


def swept_keys(runs: list[RunData]) -> list[str]:
    """Override keys whose value differs between runs (seed excepted), in command-line order."""
    keys: list[str] = []
    for run in runs:
        keys += [k for k in run.overrides if k not in keys]
    swept = [k for k in keys if k != "seed" and len({r.overrides.get(k, "") for r in runs}) > 1]
    return swept or [NO_SWEPT_KEY]


def fmt_value(value: str) -> str:
    try:
        number = float(value)
    except ValueError:
        return value
    return value if number.is_integer() else f"{number:.4g}"


def reaches(value: float, target: float) -> bool:
    """value >= target in the precision it was measured in: metrics are float32 (torchmetrics)
    widened to float64 in the store, so float32(0.9) = 0.8999999761581421 reaches 0.9."""
    if math.isnan(value) or math.isnan(target):
        return False
    return _float32(value) >= _float32(target)


def _float32(value: float) -> float:
    if abs(value) > 3.4028234663852886e38:  # beyond float32's range: struct would refuse it
        return math.copysign(math.inf, value)
    return struct.unpack("f", struct.pack("f", value))[0]
