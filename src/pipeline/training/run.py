"""The training path, top to bottom: check → data → model → trainer → MLflow run → fit → test.

`train(cfg)` trains one model as the config says and records it as one MLflow run, in two steps:
`build(cfg)` makes everything from the config while nothing exists in the store (any bad input
fails there), then `Job.run` opens the run, fits, tests and records. From the run's creation on,
`tracking.lifecycle.ending` is the one place that ends it FINISHED, FAILED or KILLED.
"""

from __future__ import annotations

import contextlib
import sys
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytorch_lightning as pl
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from lightning_fabric.utilities.exceptions import MisconfigurationException
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.utilities import rank_zero_only

from pipeline.config.checks import validate, validate_data_fit
from pipeline.config.job import hydra_overrides, output_dir, runs_beside_others
from pipeline.data.datamodule import MNISTDataModule
from pipeline.errors import ConfigError, Diverged, Stopped
from pipeline.model.classifier import Classifier
from pipeline.optim.factory import optimizer_factory
from pipeline.optim.schedules import scheduler_factory
from pipeline.tracking import lifecycle, owners, replay, space
from pipeline.tracking.lifecycle import Status
from pipeline.tracking.logger import MlflowLogger
from pipeline.tracking.outage import fail_fast
from pipeline.tracking.records import SPOOL_NAME, describe
from pipeline.tracking.store import open_store
from pipeline.tracking.tags import config_tags
from pipeline.training import devices, grouped, record, resume
from pipeline.training.callbacks import EpochLine, EpochTimer, WriteAhead
from pipeline.training.divergence import DivergenceGuard
from pipeline.training.pairing import pairing_tags
from pipeline.training.probe import probe_from
from pipeline.training.signals import SignalFlag, StopAtBoundary

SPLITS = ("train", "val", "test")


@dataclass
class TrainResult:
    run_id: str
    metrics: dict[str, float]  # each metric's last value
    history: dict[str, list[tuple[int, float]]]  # each metric's (step, value) points
    spooled: Path | None = None  # the spool, if the store did not take the whole record


def train(
    cfg: DictConfig,
    parent_run_id: str | None = None,
    callbacks: Sequence[pl.Callback] = (),
    tags: dict[str, str] | None = None,
) -> TrainResult:
    """Train one model as `cfg` says and record it as one MLflow run.

    `parent_run_id` and `tags` tie the run to a sweep; `callbacks` are more Lightning callbacks
    (a benchmark's probes)."""
    fail_fast()  # MLflow's client gives up in seconds; the run's writer retries
    return build(cfg, callbacks).run(parent_run_id, tags or {})


@dataclass
class Job:
    """Everything one run needs, made from the config before the run exists."""

    cfg: DictConfig
    resume_from: resume.ResumePoint | None
    datamodule: MNISTDataModule
    model: Classifier
    trainer: pl.Trainer
    logger: MlflowLogger
    signals: SignalFlag
    best: ModelCheckpoint  # the best validation accuracy's checkpoint
    last: ModelCheckpoint  # every epoch's end (and a stop's): last.ckpt
    checkpoint_dir: Path
    workdir: Path
    in_cluster: bool  # inside a cluster's job (SLURM): Lightning picked its environment
    tags: dict[str, str] = field(default_factory=dict)  # the run's tags known before it exists

    @property
    def last_path(self) -> Path:
        return self.checkpoint_dir / "last.ckpt"

    def run(self, parent_run_id: str | None, tags: dict[str, str]) -> TrainResult:
        """Open the MLflow run, fit, test and record; the run ends through `lifecycle.ending`."""
        run_tags = {**self.tags, **tags}
        with contextlib.ExitStack() as held, self.signals:  # a signal stops at the next boundary
            client, run_id = self.open_run(held, run_tags, parent_run_id)
            writer = self.logger.writer  # from here the main thread writes nothing to the store
            try:
                with lifecycle.ending(
                    client, run_id, lambda: self.signals.received, self.before_end, writer
                ):
                    metrics = self.fit_and_test(client, run_id)
            except BaseException as error:
                raise self.explained(error, run_id) from None
            finally:
                if writer is not None:  # what the writer kept for a disk-full line not said
                    writer.tell()
        spooled = writer.spool.path if writer is not None and writer.left() else None
        return TrainResult(run_id, metrics, dict(self.logger.history), spooled)

    def open_run(
        self, held: contextlib.ExitStack, run_tags: dict[str, str], parent_run_id: str | None
    ) -> tuple[MlflowClient, str]:
        """A new run, or the resumed one reopened; this process holds its writer lock."""
        cfg, came_from = self.cfg, self.resume_from
        if came_from and came_from.run_id:
            client, run_id = open_store(cfg.tracking.uri), came_from.run_id
            held.enter_context(owners.writer_lock(run_id, f"resume={run_id}"))
            resume.check_writer(client.get_run(run_id), f"resume={run_id}", cfg.resume_force)
            self.replay_journal(client, run_id)  # what the store lacks, before it goes on
            run_tags["resume.checkpoint"] = came_from.ckpt_path
            lifecycle.reopen_run(
                client, run_id, cfg, hydra_overrides(), run_tags, skip_params=resume.OWN_KEYS
            )
            self.logger.continue_run(resume.history(client, run_id))
        else:
            client, run_id = lifecycle.start_run(cfg, hydra_overrides(), run_tags, parent_run_id)
            held.enter_context(owners.writer_lock(run_id, f"run {run_id}"))
        held.enter_context(owners.Heartbeat(client, run_id))
        owners.warn_stale(client, cfg.tracking.experiment)
        self.logger.bind(client, run_id)
        if rank_zero_only.rank == 0:  # DDP ranks > 0 re-run this file and log into the same run
            sizes, where = (
                self.datamodule.sizes,
                f"{self.trainer.num_devices} x {run_tags['accelerator']}",
            )
            print(
                f"MLflow run {run_id} started: {cfg.data.name} ({self.datamodule.source_used}: "
                f"{sizes['train']} train / {sizes['val']} val / {sizes['test']} test), {where}",
                flush=True,
            )
        return client, run_id

    def replay_journal(self, client: MlflowClient, run_id: str) -> None:
        """The run's journal (its output folder's, when that is here) into the store, so that
        the history the run goes on from is whole (tracking.replay)."""
        if rank_zero_only.rank != 0 or self.logger.spool is None:
            return
        done = replay.resume_replay(self.logger.spool, client, run_id)
        if done.left or done.untrusted:
            raise ConfigError(
                f"resume={run_id}: {len(done.left) + len(done.untrusted)} record(s) of its "
                f"journal {done.spool} could not be sent ({done.errors[0]}); run "
                f"python scripts/runs.py sync {done.spool.parent} when the store answers"
            )
        if done.sent:
            print(f"MLflow run {run_id}: replayed {describe(done.sent)} from its journal")

    def fit_and_test(self, client: MlflowClient, run_id: str) -> dict[str, float]:
        """Fit, test the best checkpoint, record; returns each metric's last value."""
        trainer, model, datamodule, signals = (
            self.trainer,
            self.model,
            self.datamodule,
            self.signals,
        )
        name = client.get_run(run_id).info.run_name if trainer.is_global_zero else ""
        ckpt_path = self.resume_from.ckpt_path if self.resume_from else None
        if (
            self.cfg.tracking.log_model and trainer.is_global_zero
        ):  # its first-call costs, meanwhile
            from pipeline.tracking import models

            models.warm_up(datamodule.tensors["test"][0][:2])
        with moot_warnings(ckpt_path is not None, outside_cluster=not self.in_cluster):
            trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
        signals.check()
        # Read before `test`: restoring the best checkpoint restores the callback's state as it
        # was then, which forgets a last.ckpt written after it.
        saved = {self.best.best_model_path, self.last.best_model_path} - {""}
        with moot_warnings(ckpt_path is not None, outside_cluster=not self.in_cluster):
            tested = self.best.best_model_path or "best"  # named: `last` is a checkpoint too
            trainer.test(model, datamodule=datamodule, ckpt_path=tested, verbose=False)
        signals.check()
        self.logger.flush()
        metrics = {key: points[-1][1] for key, points in self.logger.history.items()}
        if trainer.is_global_zero:
            writer, source = self.logger.writer, datamodule.source_used
            record.artifacts(
                self.cfg,
                writer,
                title=f"{name} · {self.cfg.data.name} ({source}) · MLflow run {writer.run_id}",
                checkpoints=saved,
                history=self.logger.history,
                model=model,
                example=datamodule.tensors["test"][0][:5],
                workdir=self.workdir,
            )
            writer.drain()  # recorded (or spooled) before the status is decided
            writer.check_space()  # an artifact the disk could not take: FAILED
        signals.check()  # a signal while recording: the run ends KILLED all the same
        return metrics

    def before_end(self, status: Status) -> None:
        self.logger.flush()
        if status != Status.FINISHED:  # this stop's last.ckpt, or the newest epoch's
            # A checkpoint a full disk cut short: no use, and its space is what the store
            # needs to write the status (tracking.space).
            space.free_partial(self.checkpoint_dir)
            record.checkpoint(self.logger.writer, self.last_path)

    def explained(self, error: BaseException, run_id: str) -> BaseException:
        """The error as the command explains it, now that the run has ended (pipeline.errors)."""
        if self.signals.received is not None:
            checkpoint = str(self.last_path) if self.last_path.is_file() else None
            done = self.trainer.current_epoch  # every epoch trained: a plain resume has no work
            trained = done if done >= (self.trainer.max_epochs or 0) > 0 else None
            return Stopped(self.signals.received, run_id, checkpoint, trained)
        if isinstance(error, Diverged):
            text = f"MLflow run {run_id} marked FAILED, tag diverged=true: {error}"
            return Diverged(text, loss=error.loss, step=error.step)
        full = space.explain(error, run_id, self.logger.writer)  # one line, the status said
        if full is not None and self.logger.writer is not None:
            self.logger.writer.untold = None  # said in the line
        return error if full is None else full


@contextlib.contextmanager
def moot_warnings(resuming: bool, outside_cluster: bool = True) -> Iterator[None]:
    """Lightning's warnings that are wrong or moot here, each matched exactly: any other warning
    still shows."""
    with warnings.catch_warnings():
        # log_every_n_steps counts optimizer steps; Lightning compares it with its batches
        # (groups of minibatches), so its warning that an epoch has too few is wrong here.
        warnings.filterwarnings("ignore", ".*is smaller than the logging interval")
        # Lightning 2.6's own use of an API that torch deprecated: nothing to do on our side.
        warnings.filterwarnings(
            "ignore", r".*isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning
        )
        if resuming:  # a resumed run writes into its own checkpoint folder again, on purpose
            warnings.filterwarnings("ignore", "Checkpoint directory .* exists and is not empty")
        if outside_cluster:  # the plain environment was chosen; yet `fit` asks SLURM's whether
            # to resume a SLURM requeue, which warns wherever `srun` exists.
            warnings.filterwarnings("ignore", "The `srun` command is available on your system")
        yield


def build(cfg: DictConfig, callbacks: Sequence[pl.Callback] = ()) -> Job:
    """Everything from the config, checked; nothing in the store exists yet."""
    # 1. Everything that can be wrong with the input fails here, before any run exists.
    cfg, resume_from = resume.prepare(cfg, hydra_overrides())  # resume=<run id> / ckpt_path=
    validate(cfg)
    if resume_from:  # the checkpoint fits the model and optimizer this config builds
        resume.check_fits(resume_from, cfg)
    devices.set_threads(cfg.get("torch_threads"))
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    # `limit_*_batches` count minibatches: the data module applies them, not Lightning.
    limits = {split: cfg.trainer.get(f"limit_{split}_batches") for split in SPLITS}
    datamodule = instantiate(cfg.data, seed=cfg.seed, limit_batches=limits)
    datamodule.load_shared()  # a missing or corrupt data source also fails before the run
    validate_data_fit(cfg, datamodule.tensors)  # model.input_size / num_classes fit the data

    # 2. The model gets the optimizer as a partial: `params -> torch.optim.Optimizer`, and the
    # lr schedule as one: `(optimizer, total steps) -> LambdaLR` (None: constant).
    timer, signals = EpochTimer(), SignalFlag()
    model = instantiate(
        cfg.model,
        optimizer=optimizer_factory(cfg.optimizer),
        scheduler=scheduler_factory(cfg.get("scheduler")),
        step_each=grouped.step_each,
        probe=probe_from(cfg, timer),  # None unless probe.every_n_steps > 0
        _convert_="all",
    )
    paired = pairing_tags(model, datamodule.tensors["train"], cfg.seed)  # before any step

    # 3. The trainer: checkpoints of the best validation accuracy and of every epoch's end
    # (`save_last=True` writes last.ckpt only in epochs whose val/acc is a new best).
    # A run keeps one output folder, its journal's: a resume with the folder here goes on in it.
    kept = resume_from.checkpoint_dir if resume_from else None
    workdir = kept.parent if kept is not None else output_dir(cfg)
    checkpoint_dir = kept or workdir / "checkpoints"
    best = ModelCheckpoint(checkpoint_dir, "best-{epoch}", monitor="val/acc", mode="max")
    last = ModelCheckpoint(checkpoint_dir, "last", enable_version_counter=False)
    logger = MlflowLogger(cfg.tracking.get("flush_every_s", 5.0), spool=workdir / SPOOL_NAME)
    # Jobs that run beside others (joblib, SLURM) print no bar and no line an epoch: theirs
    # would interleave with nothing to tell them apart; each says its result when it ends.
    beside_others = runs_beside_others()
    interactive = sys.stdout.isatty() and not beside_others
    callbacks = [
        *callbacks,
        best,
        last,
        timer,
        grouped.GroupedLoop(),
        StopAtBoundary(signals, checkpoint_dir / "last.ckpt"),
        DivergenceGuard(cfg.trainer.log_every_n_steps, cfg.diverge_factor),
        WriteAhead(logger),
        *([] if interactive or beside_others else [EpochLine(timer)]),
    ]
    plugins = devices.cluster_plugins()  # [] inside a cluster's job: Lightning detects which
    try:
        trainer: pl.Trainer = instantiate(
            cfg.trainer,
            logger=logger,
            callbacks=callbacks,
            enable_progress_bar=interactive,
            enable_model_summary=False,
            default_root_dir=str(workdir),
            plugins=plugins,
            **{f"limit_{s}_batches": 0 if limit == 0 else None for s, limit in limits.items()},
        )
    except InstantiationException as error:  # what validate() cannot know, e.g. a missing package
        cause = error.__cause__
        if not isinstance(cause, ValueError | TypeError | ImportError | MisconfigurationException):
            raise
        first = (str(cause).strip() or type(cause).__name__).splitlines()[0]
        raise ConfigError(f"Lightning's Trainer refuses the trainer.* settings: {first}") from None
    devices.check_launch(cfg.trainer, trainer)  # DDP that cannot start its ranks fails here
    tags = {
        "data.source_used": datamodule.source_used,
        **{f"data.{split}_size": str(n) for split, n in datamodule.sizes.items()},
        "accelerator": type(trainer.accelerator).__name__.removesuffix("Accelerator").lower(),
        "devices": str(trainer.num_devices),
        "precision": str(trainer.precision),
        "torch.threads": str(torch.get_num_threads()),
        **paired,
        **config_tags(cfg),  # tracking.tags (a sweep's stage, trial, ...)
        **devices.batch_sizes(cfg.data.batch_size, trainer),
        resume.CHECKPOINT_DIR_TAG: str(best.dirpath),
        **owners.owner_tags(),  # so `scripts/runs.py clean-stale` tells dead writers from live
    }
    return Job(
        cfg=cfg, resume_from=resume_from, datamodule=datamodule, model=model, trainer=trainer,
        logger=logger, signals=signals, best=best, last=last, checkpoint_dir=checkpoint_dir,
        workdir=workdir, in_cluster=not plugins, tags=tags,
    )  # fmt: skip
