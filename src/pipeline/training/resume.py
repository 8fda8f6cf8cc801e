"""Continue a run: `python train.py resume=<run id>` or `python train.py ckpt_path=<file>`.

The same MLflow run goes on from its last checkpoint:
- the config is the run's own (its `config.yaml` artifact); only what is given on this command
  line overrides it (`trainer.max_epochs=10`, `optimizer=adam` replaces the whole group);
- Lightning restores weights, optimizer state and step counters, so the metric step axis goes
  on where it stopped, without overlap;
- params are logged only where new; a value that changed is recorded as a tag
  `resume.changed.<key>` = "old -> new" (MLflow does not allow a param to change).
The checkpoint is the run's local `last.ckpt` when its folder is still on this machine (newest,
also after a SIGKILL), else the `checkpoints/last.ckpt` artifact.
"""

from __future__ import annotations

import logging
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.utils import instantiate
from mlflow.entities import Run
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf

from pipeline.config import stored
from pipeline.errors import ConfigError
from pipeline.optim.factory import optimizer_factory
from pipeline.optim.schedules import scheduler_factory
from pipeline.tracking import owners
from pipeline.tracking.store import open_existing
from pipeline.tracking.tags import CHECKPOINT_DIR_TAG
from pipeline.training import grouped
from pipeline.training.callbacks import CKPT_RUN_KEY

log = logging.getLogger(__name__)

# Keys that say how this session started: never taken from the old run, never logged as changes.
OWN_KEYS = ("resume", "ckpt_path", "resume_force")


@dataclass
class ResumePoint:
    run_id: str | None  # the run to continue; None: a new run that starts from the checkpoint
    ckpt_path: str
    checkpoint_dir: Path | None  # the run's checkpoint folder, when it is still here


def prepare(cfg: DictConfig, overrides: list[str]) -> tuple[DictConfig, ResumePoint | None]:
    """(the config to train with, where to resume) - raises ConfigError before anything changes.

    Nothing here writes: the run is reopened only once every check has passed (`check_fits`
    after the merged config is validated, then the writer lock in training.run).
    """
    run_id, ckpt = cfg.get("resume"), cfg.get("ckpt_path")
    if not run_id and not ckpt:
        return cfg, None
    path = None
    if ckpt:
        path = Path(str(ckpt)).expanduser().resolve()
        if not path.is_file():
            raise ConfigError(f"ckpt_path={ckpt}: no such file; give a Lightning .ckpt file")
        owner = load(path).get(CKPT_RUN_KEY)
        if run_id and owner and owner != run_id:
            raise ConfigError(
                f"ckpt_path={ckpt} belongs to MLflow run {owner}, not to resume={run_id}; "
                f"pass resume={owner}, or only ckpt_path="
            )
        if not run_id and not owner:
            return cfg, ResumePoint(None, str(path), None)
        what = f"resume={run_id}" if run_id else f"ckpt_path={ckpt} (of MLflow run {owner})"
        run_id = run_id or owner
    else:
        what = f"resume={run_id}"
    run_id = str(run_id)
    client = open_existing(cfg.tracking.uri, what)  # a resume never creates or upgrades a store
    try:
        run = client.get_run(run_id)
    except MlflowException:
        raise ConfigError(
            f"{what}: no such run in tracking.uri={cfg.tracking.uri}; copy the id from the UI "
            "or from the line 'MLflow run <id> started', and point tracking.uri at its store"
        ) from None
    check_writer(run, what, bool(cfg.get("resume_force")))
    merged = merge(run_config(client, run_id, cfg, what), cfg, overrides)
    folder = (
        Path(run.data.tags[CHECKPOINT_DIR_TAG]) if CHECKPOINT_DIR_TAG in run.data.tags else None
    )
    folder = folder if folder is not None and folder.is_dir() else None
    if path is None:
        path = _find_checkpoint(client, run_id, folder)
    checkpoint = load(path)
    if "population" in checkpoint:  # population.checkpoint.POPULATION_KEY: K runs in one file
        raise ConfigError(
            f"{what}: the run is a member of a population, whose checkpoint {path} holds all "
            "its members; run the sweep's own command again (hydra/launcher=population) to "
            "resume them together"
        )
    owner = checkpoint.get(CKPT_RUN_KEY)
    if owner and owner != run_id:  # a folder shared with another run, or a copied file
        raise ConfigError(
            f"{what}: its checkpoint {path} belongs to MLflow run {owner}; it cannot continue "
            f"run {run_id} (resume={owner} continues that run)"
        )
    done = grouped.epochs_done(checkpoint)
    # A RUNNING run (its process SIGKILLed) that trained every epoch resumes to be tested and
    # recorded (points it has are not written again); a run that ended needs more epochs.
    if done is not None and done >= merged.trainer.max_epochs and run.info.status != "RUNNING":
        raise ConfigError(
            f"{what}: the run has already trained {done} epochs "
            f"(trainer.max_epochs={merged.trainer.max_epochs}); to train on, pass "
            f"trainer.max_epochs={done + 5} (or any number above {done})"
        )
    return merged, ResumePoint(run_id, str(path), folder)


def check_writer(run: Run, what: str, force: bool) -> None:
    """A RUNNING run may still have a live writer: refuse it, unless the user says it is dead."""
    if run.info.status != "RUNNING":
        return
    tags = run.data.tags
    state = owners.writer_state(tags)
    writer = f"pid {tags.get(owners.PID_TAG, '?')} on {tags.get(owners.HOST_TAG, '?')}"
    if state == "alive" and tags.get(owners.HOST_TAG) == socket.gethostname():
        raise ConfigError(
            f"{what}: the run is still being written by {writer}; stop that process first "
            "(its run then ends KILLED)"
        )
    if state != "dead" and not force:
        seen = "its heartbeat is fresh" if state == "alive" else "it may still be alive"
        raise ConfigError(
            f"{what}: the run is RUNNING, written by {writer} ({seen}); if that process is "
            "dead, pass resume_force=true to take the run over"
        )


def load(path: Path) -> dict:
    """A Lightning checkpoint, read without running any code it may carry (`weights_only`)."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        reason = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error)
        raise ConfigError(
            f"ckpt_path={path}: not a checkpoint this pipeline can read safely ({reason}); "
            "give a last.ckpt or best-*.ckpt written by a run"
        ) from None
    if not isinstance(checkpoint, dict) or not {"state_dict", "loops"} <= set(checkpoint):
        raise ConfigError(
            f"ckpt_path={path}: not a Lightning checkpoint (no state_dict and loop state); "
            "give a last.ckpt or best-*.ckpt written by a run"
        )
    return checkpoint


def check_fits(point: ResumePoint, cfg: DictConfig) -> None:
    """The checkpoint's weights fit the model `cfg` builds, and its optimizer state the
    optimizer: checked here, so that a resume that cannot work fails before the run is touched."""
    checkpoint = load(Path(point.ckpt_path))
    what = f"resume={point.run_id}" if point.run_id else f"ckpt_path={point.ckpt_path}"
    model = instantiate(cfg.model, optimizer=optimizer_factory(cfg.optimizer), _convert_="all")
    try:
        model.load_state_dict(checkpoint["state_dict"])
    except RuntimeError as error:
        shapes = str(error).strip().splitlines()[-1].strip()[:200]
        raise ConfigError(
            f"{what}: the checkpoint holds another model than model={_model_line(cfg)} "
            f"({shapes}); resume with the run's own model settings, or start a new run"
        ) from None
    scheduled = scheduler_factory(cfg.get("scheduler")) is not None
    if bool(checkpoint.get("lr_schedulers")) != scheduled and checkpoint.get("global_step"):
        had = "a" if checkpoint.get("lr_schedulers") else "no"
        raise ConfigError(
            f"{what}: the run trained with {had} learning-rate schedule, so scheduler="
            f"{(cfg.get('scheduler') or {}).get('name', 'constant')} cannot take over mid-run; "
            "resume with the run's own scheduler, or start a new run"
        )
    states = checkpoint.get("optimizer_states") or []
    if not states:
        return
    optimizer = model.build_optimizer()
    saved = states[0].get("param_groups", [{}])
    missing = sorted(set(optimizer.param_groups[0]) - set(saved[0]) - {"params"})
    try:
        if missing:
            raise ValueError(f"its state has no {', '.join(missing)}")
        optimizer.load_state_dict(states[0])
    except (ValueError, KeyError) as error:
        raise ConfigError(
            f"{what}: the checkpoint's optimizer state does not fit "
            f"optimizer={cfg.optimizer.name} ({error}); an optimizer cannot change on resume: "
            f"resume with the run's own optimizer, or train optimizer={cfg.optimizer.name} in "
            "a new run"
        ) from None


def _model_line(cfg: DictConfig) -> str:
    return f"hidden_sizes={list(cfg.model.hidden_sizes)}"


def run_config(client: MlflowClient, run_id: str, cfg: DictConfig, what: str) -> DictConfig:
    """The run's `config.yaml`, checked as data against `cfg` (pipeline.config.stored): a
    `_target_` that neither conf/ nor this command line names is refused, never instantiated."""
    try:
        with tempfile.TemporaryDirectory() as folder:
            text = Path(client.download_artifacts(run_id, "config.yaml", folder)).read_bytes()
    except (MlflowException, OSError):
        raise ConfigError(f"resume={run_id}: the run has no config.yaml artifact") from None
    return stored.parse(text, cfg, what)


def merge(run_cfg: DictConfig, cfg: DictConfig, overrides: list[str]) -> DictConfig:
    """The run's config, with this command line's overrides and this machine's paths on top."""
    merged = OmegaConf.create(OmegaConf.to_container(run_cfg))
    for key in ("paths", "tracking.uri", "tracking.artifact_root", *OWN_KEYS):
        OmegaConf.update(merged, key, OmegaConf.select(cfg, key), merge=False, force_add=True)
    for override in OverridesParser.create().parse_overrides(overrides):
        key = override.key_or_group
        if key.startswith("hydra") or key in OWN_KEYS:
            continue
        if override.is_delete():
            parent, _, leaf = key.rpartition(".")
            node = OmegaConf.select(merged, parent) if parent else merged
            if node is not None and leaf in node:
                del node[leaf]
        else:  # the value as Hydra composed it (a group override brings its whole node)
            value = OmegaConf.select(cfg, key)
            OmegaConf.update(merged, key, value, merge=False, force_add=True)
    OmegaConf.set_struct(merged, True)
    return merged


def _find_checkpoint(client: MlflowClient, run_id: str, folder: Path | None) -> Path:
    if folder is not None and (folder / "last.ckpt").is_file():
        return folder / "last.ckpt"
    try:
        target = tempfile.mkdtemp(prefix="resume-")
        return Path(client.download_artifacts(run_id, "checkpoints/last.ckpt", target))
    except (MlflowException, OSError):
        raise ConfigError(
            f"resume={run_id}: the run has no checkpoint (no local last.ckpt, no artifact "
            "checkpoints/last.ckpt), so it cannot be continued; start a new run instead"
        ) from None


def history(client: MlflowClient, run_id: str) -> dict[str, list[tuple[int, float]]]:
    """The run's metrics so far, so that the curves and final numbers cover the whole run."""
    run = client.get_run(run_id)
    return {
        key: [(m.step, m.value) for m in client.get_metric_history(run_id, key)]
        for key in run.data.metrics
    }
