"""How the same sweep command resumes an interrupted population (population.checkpoint has
what its checkpoint holds and when it is written).

For each job of the batch, the launcher finds the job's earlier run (as sweeps.jobs.before_job
does); a KILLED member, or a RUNNING one whose writer is dead (SIGKILL), whose population
checkpoint is still on this machine goes on from it, together with the jobs of the checkpoint's
other members. Members whose runs ended before the stop (FINISHED; FAILED: diverged, frozen in
the checkpoint) are left exactly as they are.

Read back, the checkpoint is untrusted: `torch.load(weights_only=True)`, then its keys, K, run
ids (each a run of this population in the store) and shapes are checked against the members
before any run is touched (ConfigError: one line, exit 2, nothing changed).
"""

from __future__ import annotations

from pathlib import Path

import torch
from mlflow.entities import Run
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig

from pipeline.errors import ConfigError
from pipeline.population.checkpoint import CHECKPOINT_NAME, POPULATION_KEY
from pipeline.population.records import MemberRecords
from pipeline.tracking import lifecycle, owners, replay
from pipeline.tracking.records import SPOOL_NAME
from pipeline.tracking.replay import POPULATION_TAG
from pipeline.tracking.status import Status
from pipeline.tracking.tags import CHECKPOINT_DIR_TAG
from pipeline.training.resume import OWN_KEYS, history


def read(path: Path) -> dict:
    """The checkpoint at `path`, loaded as data only (ConfigError: one line, nothing changed)."""
    where = f"population checkpoint {path}"
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        first = (str(error).strip() or type(error).__name__).splitlines()[0][:200]
        raise ConfigError(
            f"{where}: not a checkpoint this pipeline can read safely ({first}); "
            "delete it (and the KILLED member runs) to train afresh"
        ) from None
    meta = checkpoint.get(POPULATION_KEY) if isinstance(checkpoint, dict) else None
    ok = (
        isinstance(meta, dict)
        and {"state_dict", "loops", "optimizer_states"} <= set(checkpoint)
        and isinstance(meta.get("id"), str)
        and isinstance(meta.get("run_ids"), list)
        and all(isinstance(r, str) for r in meta["run_ids"])
        and isinstance(meta.get("state"), dict)
    )
    if not ok:
        raise ConfigError(
            f"{where}: not a population's checkpoint (no member runs, weights "
            "and loop state); delete it to train the jobs afresh"
        )
    return checkpoint


def check(checkpoint: dict, path: Path, module) -> None:
    """The checkpoint's weights and per-member state fit `module` (K, every shape)."""
    where = f"population checkpoint {path}"
    meta, k = checkpoint[POPULATION_KEY], module.net.size
    state = meta["state"]
    want = {name: tuple(t.shape) for name, t in module.state_dict().items()}
    have = {
        name: tuple(t.shape) if isinstance(t, torch.Tensor) else None
        for name, t in checkpoint["state_dict"].items()
    }
    problems = []
    if len(meta["run_ids"]) != k:
        problems.append(f"{len(meta['run_ids'])} member runs, not {k}")
    if have != want:
        bad = sorted(set(have) ^ set(want) | {n for n in have if have[n] != want.get(n)})
        problems.append(f"weights {', '.join(bad[:3])} do not fit {k} members")
    for name, shape in (("active", (k,)), ("best_acc", (k,))):
        value = state.get(name)
        if not isinstance(value, torch.Tensor) or tuple(value.shape) != shape:
            problems.append(f"{name} is not {k} values")
    best = state.get("best")
    params = [tuple(p.shape) for p in module.net.parameters()]
    if best is not None and [tuple(getattr(b, "shape", ())) for b in best] != params:
        problems.append("the best weights do not fit the members")
    if not _optimizer_fits(checkpoint["optimizer_states"], params):
        problems.append("the optimizer state does not fit the members")
    sums = state.get("train_sums")
    if sums is not None and (not isinstance(sums, torch.Tensor) or tuple(sums.shape) != (3, k)):
        problems.append("the epoch's sums do not fit the members")
    if not isinstance(state.get("checked_at"), int):
        problems.append("no step count")
    if problems:
        raise ConfigError(
            f"{where}: {'; '.join(problems)}: it does not belong to this "
            "population; delete it to train the jobs afresh"
        )


def earlier_member(cfg: DictConfig) -> Run | None:
    """The sweep job's earlier run, if a population trained it (sweeps.jobs.find)."""
    from pipeline.sweeps import jobs
    from pipeline.sweeps.common import JOB_KEY_TAG, job_tags, parent_run_id

    parent = parent_run_id()
    if parent is None or cfg.get("resume") or cfg.get("ckpt_path"):
        return None
    run = jobs.find(MlflowClient(cfg.tracking.uri), parent, job_tags()[JOB_KEY_TAG])
    return run if run is not None and POPULATION_TAG in run.data.tags else None


def resumable(run: Run) -> Path | None:
    """The population checkpoint an interrupted member goes on from (KILLED, or RUNNING with
    a dead writer: SIGKILL), if it is still on this machine."""
    status, tags = run.info.status, run.data.tags
    if status not in (Status.KILLED, Status.RUNNING):
        return None
    if status == Status.RUNNING and owners.writer_state(tags) != "dead":
        return None
    folder = tags.get(CHECKPOINT_DIR_TAG)
    path = Path(folder) / CHECKPOINT_NAME if folder else None
    return path if path is not None and path.is_file() else None


def ended_runs(client: MlflowClient, run_ids: list[str]) -> dict[int, Status]:
    """Members whose runs ended for good (FINISHED, FAILED: diverged): they stay as they are."""
    statuses = {k: client.get_run(r).info.status for k, r in enumerate(run_ids)}
    return {k: Status(s) for k, s in statuses.items() if s in (Status.FINISHED, Status.FAILED)}


def reopen(client, members, run_ids, pid, workdir, path, tags_of) -> dict[int, Status]:
    """The checkpoint's member runs, checked in the store, their journal replayed, reopened;
    returns the members that ended for good (FINISHED, or FAILED: diverged), left as they are."""
    where = f"population checkpoint {path}"
    if len(run_ids) != len(members):
        raise ConfigError(f"{where}: {len(run_ids)} member runs, not {len(members)}")
    for run_id in run_ids:
        try:
            tags = client.get_run(run_id).data.tags
        except MlflowException:
            tags = {}
        if tags.get(POPULATION_TAG) != pid:
            raise ConfigError(
                f"{where}: it names MLflow run {run_id}, which is no member of "
                f"population {pid}; delete the checkpoint to train afresh"
            )
    ended = ended_runs(client, run_ids)
    going = [run_id for k, run_id in enumerate(run_ids) if k not in ended]
    done = replay.population_replay(workdir / SPOOL_NAME, client, going)
    if done.left or done.untrusted:
        raise ConfigError(
            f"{where}: {len(done.left) + len(done.untrusted)} record(s) of its journal "
            f"{done.spool} could not be sent ({done.errors[0]}); run python scripts/runs.py "
            f"sync {workdir} when the store answers"
        )
    for k, member in enumerate(members):
        if k not in ended:
            tags = {**tags_of(k), "resume.checkpoint": str(path)}
            lifecycle.reopen_run(client, run_ids[k], member.cfg, member.overrides, tags,
                                 skip_params=OWN_KEYS)  # fmt: skip
    return ended


def continue_records(records: MemberRecords, client: MlflowClient, ended: dict) -> None:
    """Each member that goes on starts from its run's points so far (the store's)."""
    for k, run_id in enumerate(records.run_ids):
        if k not in ended:
            records.resumed(k, history(client, run_id))


def _optimizer_fits(states: object, params: list[tuple[int, ...]]) -> bool:
    """One stacked optimizer; each state tensor of parameter i is a number or of its shape."""
    if not isinstance(states, list) or len(states) != 1 or not isinstance(states[0], dict):
        return False
    per_param = states[0].get("state")
    if not isinstance(per_param, dict) or not set(per_param) <= set(range(len(params))):
        return False
    for i, values in per_param.items():
        if not isinstance(values, dict):
            return False
        for value in values.values():
            if isinstance(value, torch.Tensor) and value.dim() and tuple(value.shape) != params[i]:
                return False
    return True
