"""The runs of a fair comparison (protocol), read back from MLflow by their tags.

The contract with the protocol that runs the jobs: the parent has tags `sweep.role=parent` and
`protocol.id`, params `protocol.optimizers` (comma list), `protocol.trials` (budget per
optimizer), `protocol.tuning_seeds`, `protocol.replicate_seeds`, `protocol.target_val_acc`,
`protocol.objective`. Each child has tags `mlflow.parentRunId`, `protocol.id`, `protocol.stage`
(default / tune / replicate), `protocol.optimizer`, `protocol.trial` (tune), `protocol.seed`,
`protocol.search` (tune and replicate; 0 when absent), `diverged=true` when it diverged;
finished default and replicate runs carry `test_correct.npy`.
"""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from mlflow.tracking import MlflowClient

from pipeline.sweeps.common import CURVES, ROLE_TAG, children, is_diverged
from pipeline.tracking.status import Status
from pipeline.tracking.tags import ERROR_TAG
from pipeline.training.probe import ACC_KEY as PROBE_ACC
from pipeline.training.probe import TIME_KEY as PROBE_TIME

ID_TAG, STAGE_TAG, OPTIMIZER_TAG = "protocol.id", "protocol.stage", "protocol.optimizer"
TRIAL_TAG, SEED_TAG, SEARCH_TAG = "protocol.trial", "protocol.seed", "protocol.search"
CORRECT_FILE = "test_correct.npy"
NOT_HYPERPARAMETERS = {"optimizer._target_", "optimizer.name", "optimizer.impl", "optimizer.class"}


@dataclass
class Run:
    run_id: str
    name: str
    stage: str
    optimizer: str
    trial: int | None
    seed: int | None
    status: str  # FINISHED, FAILED, KILLED, RUNNING, or DIVERGED (status FAILED + tag)
    hyperparameters: dict[str, str]  # optimizer.* (without class and name) and scheduler.*
    test_acc: float
    curves: dict[str, list[tuple[int, float]]]
    error: str = ""
    correct: np.ndarray | None = None  # per test sample, from test_correct.npy
    search: int = 0  # which of the optimizer's independent searches (tune, replicate)

    @property
    def ok(self) -> bool:
        return self.status == Status.FINISHED

    def best_val_acc(self) -> float:
        return max((v for _, v in self.curves["val/acc"]), default=math.nan)


@dataclass
class Protocol:
    parent_id: str
    name: str
    protocol_id: str
    optimizers: list[str]
    budget: int
    tuning_seeds: str
    replicate_seeds: str
    target: float
    objective: str
    runs: list[Run] = field(default_factory=list)
    searches: int = 1  # independent searches per optimizer, `budget` trials each
    probe: tuple[int, int] | None = None  # the replicates' step probe: (every N steps, examples)
    context: str = ""  # data and epochs, from a finished child

    def of(self, stage: str, optimizer: str) -> list[Run]:
        return [r for r in self.runs if r.stage == stage and r.optimizer == optimizer]


def _int(text: str | None) -> int | None:
    try:
        return int(text) if text not in (None, "") else None
    except ValueError:
        return None


def objective_metric(objective: str) -> str:
    """The metric an objective names: 'val/acc', 'max val/acc', 'final val/acc', 'min val/loss'."""
    return next((w for w in objective.replace(":", " ").split() if "/" in w), "val/acc")


def objective_value(run: Run, objective: str) -> float:
    """A run's score: the best epoch's value of the metric (the epoch whose checkpoint is
    tested), its last with 'final'/'last' in the objective; lower is better for 'min' or a loss."""
    words = objective.replace(":", " ").lower().split()
    values = [v for _, v in run.curves.get(objective_metric(objective), [])]
    if not values:
        return math.nan
    if {"final", "last"} & set(words):
        return values[-1]
    return min(values) if lower_is_better(objective) else max(values)


def lower_is_better(objective: str) -> bool:
    words = objective.replace(":", " ").lower().split()
    return bool({"min", "minimize", "minimise"} & set(words)) or "loss" in objective_metric(
        objective
    )


def load_protocol(client: MlflowClient, parent_id: str) -> Protocol:
    """The parent's settings and every child of its protocol, with curves and correctness."""
    parent = client.get_run(parent_id)
    tags, params = parent.data.tags, parent.data.params
    if tags.get(ROLE_TAG) != "parent" or ID_TAG not in tags:
        raise ValueError(f"MLflow run {parent_id} is not the parent run of a protocol")
    found = [r for r in children(client, parent_id) if r.data.tags.get(ID_TAG) == tags[ID_TAG]]
    objective = params.get("protocol.objective", "val/acc")
    runs = [_read(client, r, objective_metric(objective)) for r in found]
    optimizers = [o.strip() for o in params.get("protocol.optimizers", "").split(",") if o]
    optimizers += sorted({r.optimizer for r in runs} - set(optimizers))
    first = next((r for r in found if r.info.status == Status.FINISHED), None)
    return Protocol(
        parent_id=parent_id,
        name=parent.info.run_name or parent_id,
        protocol_id=tags[ID_TAG],
        optimizers=optimizers,
        budget=_int(params.get("protocol.trials")) or 0,
        tuning_seeds=params.get("protocol.tuning_seeds", "?"),
        replicate_seeds=params.get("protocol.replicate_seeds", "?"),
        target=float(params.get("protocol.target_val_acc", "nan")),
        objective=objective,
        runs=runs,
        searches=_int(params.get("protocol.searches")) or 1,
        context=_context(first) if first else "",
        probe=_probe([r for r in found if r.data.tags.get(STAGE_TAG) == "replicate"]),
    )


def _probe(replicates: list) -> tuple[int, int] | None:
    """The replicates' step probe, from their params (None: off or not recorded): every N
    steps, on so many examples (no more than the validation split holds)."""
    for run in replicates:
        every = _int(run.data.params.get("probe.every_n_steps"))
        if every:
            examples = _int(run.data.params.get("probe.examples")) or 0
            held = _int(run.data.tags.get("data.val_size")) or examples
            return every, min(examples, held)
    return None


def _read(client: MlflowClient, run, metric: str) -> Run:
    tags, run_id = run.data.tags, run.info.run_id
    status = "DIVERGED" if is_diverged(run) else run.info.status
    curves = {}
    probe = (PROBE_ACC, PROBE_TIME) if tags.get(STAGE_TAG) == "replicate" else ()
    for key in dict.fromkeys((*CURVES, metric, *probe)):
        points = sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)
        curves[key] = [(m.step, m.value) for m in points]
    share = _int(tags.get("population.size")) or 1  # a population's clock counts all K members
    for key in ("epoch_time_s", PROBE_TIME):
        if share > 1 and key in curves:
            curves[key] = [(step, seconds / share) for step, seconds in curves[key]]
    result = Run(
        run_id=run_id,
        name=run.info.run_name or run_id,
        stage=tags.get(STAGE_TAG, "?"),
        optimizer=tags.get(OPTIMIZER_TAG, tags.get("optimizer", "?")),
        trial=_int(tags.get(TRIAL_TAG)),
        seed=_int(tags.get(SEED_TAG)),
        search=_int(tags.get(SEARCH_TAG)) or 0,
        status=status,
        hyperparameters={
            k: v
            for k, v in run.data.params.items()
            if k.startswith(("optimizer.", "scheduler.")) and k not in NOT_HYPERPARAMETERS
        },
        test_acc=run.data.metrics.get("test/acc", math.nan),
        curves=curves,
        error="" if status == Status.FINISHED else tags.get(ERROR_TAG, ""),
    )
    if result.ok and result.stage in ("default", "replicate"):
        result.correct = _correct(client, run_id)
    return result


def _correct(client: MlflowClient, run_id: str) -> np.ndarray | None:
    if CORRECT_FILE not in {a.path for a in client.list_artifacts(run_id)}:
        return None  # a run recorded before test_correct.npy existed
    with tempfile.TemporaryDirectory() as tmp, _quiet_downloads():
        return np.load(Path(client.download_artifacts(run_id, CORRECT_FILE, tmp))).astype(bool)


@contextlib.contextmanager
def _quiet_downloads():
    """No progress bar per file: a report reads one small file from each of many runs."""
    key, old = (
        "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR",
        os.environ.get("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"),
    )
    os.environ[key] = "false"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = old


def _context(run) -> str:
    tags, params = run.data.tags, run.data.params
    if "data.name" not in params:
        return ""
    return (
        f"Data: {params.get('data.name', '?')} ({tags.get('data.source_used', '?')}, "
        f"{tags.get('data.train_size', '?')} train / {tags.get('data.val_size', '?')} val / "
        f"{tags.get('data.test_size', '?')} test), epochs: {params.get('trainer.max_epochs', '?')}"
        f", batch size {params.get('data.batch_size', '?')}."
    )
