"""What a sweep is, so that the same command finds its parent run (and its studies) again.

The sweep key hashes everything that defines the sweep: the sweeper's settings (for the
protocol: optimizers, budget, seeds, search spaces, sampler), the command's overrides and the
composed config (data, model, trainer, ...), leaving out what only says where or how it runs
(paths, tracking, Hydra's launcher and folders, the number of parallel jobs, the storage).
For experiment=fair_comparison the key is the protocol id (tag `protocol.id`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING

from omegaconf import DictConfig, OmegaConf

from pipeline.sweeps.common import KEY_TAG, PLUMBING, ROLE_TAG
from pipeline.tracking.status import Status

if TYPE_CHECKING:
    from mlflow.entities import Run
    from mlflow.tracking import MlflowClient

log = logging.getLogger(__name__)

# Top-level keys of a job's config that do not change what a sweep computes.
NOT_WHAT = ("hydra", "paths", "tracking", "resume", "ckpt_path", "resume_force", "torch_threads")
# hydra.sweeper keys that say how, not what.
SWEEPER_HOW = ("storage", "n_jobs", "poll_s", "max_batch_size", "study_name")
RESUMES_TAG = "sweep.resumes"  # how often the parent was taken up again


def _plain(node: object) -> object:
    try:
        return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node
    except Exception:  # an interpolation that only resolves inside a job (${hydra:...})
        return OmegaConf.to_container(node, resolve=False)


def _top(override: str) -> str:
    """'+tracking.tags.x=1' -> 'tracking'; 'hydra/launcher=joblib' -> 'hydra'."""
    return override.lstrip("+~").partition("=")[0].split(".")[0].split("/")[0]


def sweep_key(config: DictConfig) -> str:
    """16 hex digits; the same for the same command on the same config files."""
    sweeper = {k: _plain(v) for k, v in config.hydra.sweeper.items() if k not in SWEEPER_HOW}
    space = sweeper.get("search_space")
    if isinstance(space, dict) and sweeper.get("optimizers"):  # only the spaces in use
        sweeper["search_space"] = {o: space.get(o) for o in sweeper["optimizers"]}
    overrides = sorted(str(o) for o in config.hydra.overrides.task if _top(str(o)) not in NOT_WHAT)
    what = {
        "sweeper": sweeper,
        "overrides": overrides,
        "config": {k: _plain(v) for k, v in config.items() if k not in NOT_WHAT},
    }
    text = json.dumps(what, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@contextlib.contextmanager
def parent_lock(config: DictConfig) -> Iterator[None]:
    """Held while the parent run is looked up or created, so that workers started at once (one
    per terminal, SLURM jobs) make one parent: the sqlite store's file lock, else the lock of
    Optuna's database (PostgreSQL), else none (a grid sweep on a server: start it once)."""
    from pipeline.tracking.store import creation_lock

    uri = str(config.tracking.uri)
    if uri.startswith("sqlite:///"):
        with creation_lock(uri):
            yield
        return
    if "storage" in config.hydra.sweeper:
        from pipeline.sweeps.search.study import storage_lock, storage_url

        with storage_lock(storage_url(config)):
            yield
        return
    yield


def find_parent(client: MlflowClient, experiment_id: str, key: str) -> Run | None:
    from mlflow.entities import ViewType

    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{KEY_TAG}` = '{key}' and tags.`{ROLE_TAG}` = 'parent'",
        run_view_type=ViewType.ACTIVE_ONLY,
        order_by=["attributes.start_time ASC"],
        max_results=1,
    )
    return runs[0] if runs else None


def take_up(client: MlflowClient, run: Run, tags: dict[str, str]) -> None:
    """The sweep's parent from an earlier attempt: RUNNING again and owned by this process,
    unless another live worker holds it (then it is only joined)."""
    from pipeline.tracking import owners

    run_id = run.info.run_id
    if run.info.status == Status.RUNNING and owners.writer_state(run.data.tags) != "dead":
        log.info("Sweep: joining parent MLflow run %s, held by a live worker", run_id)
        return
    count = int(run.data.tags.get(RESUMES_TAG, "0")) + 1
    for key, value in {**tags, RESUMES_TAG: str(count)}.items():
        client.set_tag(run_id, key, value)
    client.update_run(run_id, status=Status.RUNNING)
    log.info("Sweep: continuing parent MLflow run %s (was %s)", run_id, run.info.status)


def sweep_name(task_overrides: list[str], params: dict[str, str]) -> str:
    """e.g. 'sweep optimizer=sgd,adam seed=1,2,3' from the command line and the preset's params."""
    parts = [o for o in task_overrides if not o.lstrip("+~").startswith(PLUMBING)]
    parts += [
        f"{k}={v}" for k, v in params.items() if not any(p.startswith(k + "=") for p in parts)
    ]
    return " ".join(["sweep", *parts])[:250]
