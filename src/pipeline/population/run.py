"""`train_population`: K runs trained as one population, top to bottom, like training.run.train:
check → data → members' initial weights → trainer → K MLflow runs → fit → test → record.

Everything that can be wrong with the input, and anything that keeps the runs from being one
population (`batch_problem`), fails before any run exists. From the runs' creation on, each
member ends FINISHED, FAILED (an error; diverged=true for a diverged member, while the others go
on) or KILLED, through tracking.lifecycle.end_run and the population's one writer.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import ModelCheckpoint

from pipeline.config.checks import ConfigError, validate, validate_data_fit
from pipeline.config.job import output_dir
from pipeline.optim.factory import optimizer_kwargs
from pipeline.optim.schedules import scheduler_factory
from pipeline.optim.stacked_registry import member_hypers
from pipeline.population import checkpoint as saved
from pipeline.population import resume
from pipeline.population.data import PopulationDataModule
from pipeline.population.module import PopulationModule
from pipeline.population.records import MemberRecords
from pipeline.tracking import lifecycle, owners, replay
from pipeline.tracking.figures import plot_run
from pipeline.tracking.lifecycle import Status
from pipeline.tracking.outage import fail_fast
from pipeline.tracking.records import SPOOL_NAME, save_model
from pipeline.tracking.store import open_store
from pipeline.tracking.tags import CHECKPOINT_DIR_TAG, config_tags
from pipeline.tracking.writer import Writer
from pipeline.training import devices
from pipeline.training.callbacks import EpochTimer
from pipeline.training.pairing import pairing_tags
from pipeline.training.probe import probe_from
from pipeline.training.run import SPLITS, moot_warnings
from pipeline.training.signals import SignalFlag, Stopped

POPULATION_TAG = replay.POPULATION_TAG  # the population's id, on each member's run
SIZE_TAG, MEMBER_TAG = "population.size", "population.member"
# Keys a population's members may differ in; everything else must be the same.
PER_MEMBER = ("seed", "optimizer", "tracking.tags", "tracking.run_name", "paths")


@dataclass
class Member:
    """One run of the population: its config, overrides (its name and `overrides` tag), tags."""

    cfg: DictConfig
    overrides: list[str] = field(default_factory=list)
    tags: dict[str, str] = field(default_factory=dict)
    parent_run_id: str | None = None


@dataclass
class MemberResult:
    run_id: str
    status: Status
    metrics: dict[str, float]  # each metric's last value
    history: dict[str, list[tuple[int, float]]]
    error: BaseException | None = None


def shared_part(cfg: DictConfig) -> dict[str, object]:
    """What every member of one population must share, as dotted keys: the config without
    PER_MEMBER keys, with the optimizer's torch class."""
    flat: dict[str, object] = {"optimizer.class": str(cfg.optimizer.get("_target_"))}

    def walk(node: object, key: str) -> None:
        if key.startswith(PER_MEMBER) or key == "hydra":
            return
        if isinstance(node, dict):
            for name, value in node.items():
                walk(value, f"{key}.{name}" if key else str(name))
        else:
            flat[key] = node

    walk(OmegaConf.to_container(cfg, resolve=False), "")
    return flat


def batch_problem(cfgs: list[DictConfig]) -> str | None:
    """Why these configs cannot train as one population, or None."""
    first = cfgs[0]
    if any(cfg.get("resume") or cfg.get("ckpt_path") for cfg in cfgs):
        return "resume= / ckpt_path= runs go on one by one"
    if first.model.get("_target_") != "pipeline.model.classifier.Classifier":
        return f"model {first.model.get('_target_')} has no stacked form"
    if first.trainer.get("strategy") not in (None, "auto") or first.trainer.get("devices", 1) != 1:
        return "a population trains on one device (no DDP)"
    if first.trainer.get("precision") in ("16-mixed", "16", 16):
        return "fp16 loss scaling is per model: use bf16-mixed, 32-true or 64-true"
    shared = shared_part(first)
    for cfg in cfgs[1:]:
        if shared_part(cfg) != shared:
            mine = shared_part(cfg)
            keys = sorted(k for k in set(mine) | set(shared) if mine.get(k) != shared.get(k))
            return f"they differ in {', '.join(keys)} (only optimizer.* and seed may)"
    try:
        member_hypers(
            get_class(first.optimizer._target_), [optimizer_kwargs(c.optimizer) for c in cfgs]
        )
    except ValueError as error:
        return str(error)
    return None


def member_tags(member: Member, datamodule, trainer: pl.Trainer, paired: dict, population: dict):
    """A single run's tags (training.run), the checkpoint folder aside, plus the population's."""
    cfg = member.cfg
    return {
        "data.source_used": datamodule.source_used,
        **{f"data.{split}_size": str(n) for split, n in datamodule.sizes.items()},
        "accelerator": type(trainer.accelerator).__name__.removesuffix("Accelerator").lower(),
        "devices": str(trainer.num_devices),
        "precision": str(trainer.precision),
        "torch.threads": str(torch.get_num_threads()),
        **paired,
        **config_tags(cfg),
        **member.tags,
        **devices.batch_sizes(cfg.data.batch_size, trainer),
        **owners.owner_tags(),
        **population,
    }


def train_population(
    members: list[Member],
    workdir: Path | None = None,
    resume_from: Path | None = None,
    threads: int | None = None,
) -> list[MemberResult]:
    """Train `members` as one population; each becomes its own MLflow run. `resume_from`: the
    population checkpoint (population.checkpoint) whose member runs go on, in member order;
    `threads`: torch threads for it (None: the members' `torch_threads`)."""
    fail_fast()
    cfgs = [m.cfg for m in members]
    for cfg in cfgs:
        validate(cfg)
    problem = batch_problem(cfgs)
    if problem is not None:
        raise ConfigError(f"these runs cannot train as one population: {problem}")
    first = cfgs[0]
    optimizer = member_hypers(
        get_class(first.optimizer._target_), [optimizer_kwargs(c.optimizer) for c in cfgs]
    )
    devices.set_threads(threads or first.get("torch_threads"))
    limits = {split: first.trainer.get(f"limit_{split}_batches") for split in SPLITS}
    data_args = OmegaConf.to_container(first.data, resolve=True)
    data_args.pop("_target_")
    datamodule = PopulationDataModule([c.seed for c in cfgs], limit_batches=limits, **data_args)
    datamodule.load_shared()
    validate_data_fit(first, datamodule.tensors)

    # Each member's initial weights: drawn right after seeding, as a single run draws them.
    nets, paired = [], []
    for cfg in cfgs:
        pl.seed_everything(cfg.seed, workers=True, verbose=False)
        single = instantiate(cfg.model, _convert_="all")
        paired.append(pairing_tags(single, datamodule.tensors["train"], cfg.seed))
        nets.append(single.net)

    if resume_from is not None:  # the population goes on in its own folder, with its journal
        workdir = resume_from.parent.parent
    workdir = Path(workdir or output_dir(first))
    checkpoints = workdir / "checkpoints"
    timer, signals = EpochTimer(), SignalFlag()
    stop = saved.StopAtGroup(signals, checkpoints / saved.CHECKPOINT_NAME, None, "")
    last = ModelCheckpoint(checkpoints, "last", enable_version_counter=False)
    trainer: pl.Trainer = instantiate(
        first.trainer,
        logger=False,
        callbacks=[timer, stop, last],  # each member's best weights are kept by the module
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(workdir),
        plugins=devices.cluster_plugins(),
        **{f"limit_{s}_batches": 0 if limit == 0 else None for s, limit in limits.items()},
    )
    model = PopulationModule(
        nets,
        first.model.loss,
        optimizer,
        None,
        timer,
        first.diverge_factor,
        probe_from(first, timer),
        scheduler=scheduler_factory(first.get("scheduler")),
    )
    checkpoint = None
    if resume_from is not None:  # checked before any run is touched
        checkpoint = resume.read(resume_from)
        resume.check(checkpoint, resume_from, model)
    client = open_store(first.tracking.uri)
    pid = checkpoint[saved.POPULATION_KEY]["id"] if checkpoint else uuid.uuid4().hex[:12]
    population = {POPULATION_TAG: pid, SIZE_TAG: str(len(members))}

    def tags_of(k: int) -> dict[str, str]:
        extra = {**population, MEMBER_TAG: str(k), CHECKPOINT_DIR_TAG: str(checkpoints)}
        return member_tags(members[k], datamodule, trainer, paired[k], extra)

    if checkpoint is not None:
        run_ids = list(checkpoint[saved.POPULATION_KEY]["run_ids"])
        ended = resume.reopen(client, members, run_ids, pid, workdir, resume_from, tags_of)
    else:
        run_ids, ended = start(client, members, tags_of), {}
        saved.write_manifest(workdir, pid, run_ids, str(first.tracking.uri))
    os.environ.pop(lifecycle.RUN_ID_ENV, None)  # it is for DDP ranks, which a population lacks
    going = [run_id for k, run_id in enumerate(run_ids) if k not in ended]
    writer = Writer(client, (going or run_ids)[0], workdir / SPOOL_NAME)
    records = MemberRecords(client, writer, run_ids, ended)
    if checkpoint is not None:
        resume.continue_records(records, client, ended)
    model.records, stop.records, stop.id = records, records, pid
    went = "continued" if checkpoint is not None else "started"
    print(
        f"population {pid}: {len(members) - len(ended)} MLflow runs {went} "
        f"({first.optimizer.name}, {datamodule.sizes['train']} train samples each)",
        flush=True,
    )
    try:
        with signals, moot_warnings(resuming=checkpoint is not None, outside_cluster=True):
            ckpt = str(resume_from) if resume_from is not None else None
            trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt, weights_only=True)
            signals.check()
            if bool(model.active.any()):
                trainer.test(model, datamodule=datamodule, verbose=False)
            signals.check()
            records.flush()
            for k, member in enumerate(members):
                if records.status[k] is None:
                    record_member(member.cfg, records, k, model, datamodule)
                    records.end(k, Status.FINISHED)
    except BaseException as error:
        records.end_all(lifecycle.status_for(error, signals.received), error)
        if signals.received is not None:
            raise Stopped(signals.received, population[POPULATION_TAG]) from None
        raise
    finally:
        writer.close()
    return [
        MemberResult(run_ids[k], records.status[k], records.last(k), dict(records.history[k]))
        for k in range(len(members))
    ]


def start(client, members: list[Member], tags_of) -> list[str]:
    """A new run per member; the runs made so far end if one cannot be made."""
    run_ids: list[str] = []
    try:
        for k, member in enumerate(members):
            _, run_id = lifecycle.start_run(
                member.cfg, member.overrides, tags_of(k), member.parent_run_id
            )
            run_ids.append(run_id)
    except BaseException as error:  # the runs made so far must not stay RUNNING
        for run_id in run_ids:
            lifecycle.end_run(client, run_id, lifecycle.status_for(error), error)
        raise
    return run_ids


def record_member(cfg: DictConfig, records: MemberRecords, k: int, model, datamodule) -> None:
    """A finished member's artifacts, as a single run's (training.run.record_artifacts), in its
    own output folder; the member's best weights as its model."""
    view, folder = records.views[k], output_dir(cfg) / "member"
    folder.mkdir(parents=True, exist_ok=True)
    if cfg.tracking.get("log_curves", True):
        title = f"{cfg.data.name} ({datamodule.source_used}) · MLflow run {view.run_id}"
        figure = plot_run(
            records.history[k],
            folder / "curves.png",
            title=title,
            every=cfg.trainer.log_every_n_steps,
        )
        view.log_artifact(figure)
    if model.test_correct is not None:
        np.save(folder / "test_correct.npy", model.test_correct[k].numpy())
        view.log_artifact(folder / "test_correct.npy")
    if cfg.tracking.log_model:
        path = folder / "mlflow-model.pt"
        build = save_model(model.net.member(k), datamodule.tensors["test"][0][:5], path)
        view.submit("model", path=str(path.resolve()), build=build)
