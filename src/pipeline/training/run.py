"""The training path, top to bottom: check → data → model → trainer → MLflow run → fit → test.

`train(cfg)` trains one model as the config says and records it as one MLflow run. Everything
that can be wrong with the input fails before the run exists; from its creation on,
`tracking.lifecycle.ending` is the one place that ends it FINISHED, FAILED or KILLED.
"""

from __future__ import annotations

import contextlib
import sys
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from lightning_fabric.utilities.exceptions import MisconfigurationException
from omegaconf import DictConfig
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.utilities import rank_zero_only

from pipeline.config.checks import ConfigError, validate, validate_data_fit
from pipeline.config.job import hydra_overrides, output_dir, runs_beside_others
from pipeline.optim.factory import optimizer_factory
from pipeline.tracking import lifecycle, owners, spool
from pipeline.tracking.figures import plot_run
from pipeline.tracking.lifecycle import Status
from pipeline.tracking.logger import MlflowLogger
from pipeline.tracking.outage import DiskFull, no_space
from pipeline.tracking.store import open_store
from pipeline.tracking.tags import config_tags
from pipeline.training import devices, resume
from pipeline.training.callbacks import EpochLine, EpochTimer, RunIdInCheckpoint
from pipeline.training.divergence import Diverged, DivergenceGuard
from pipeline.training.pairing import pairing_tags
from pipeline.training.signals import SignalFlag, StopAtBoundary, Stopped

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
    spool.fail_fast()  # MLflow's client gives up in seconds; the run's writer retries
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

    # 2. The model gets the optimizer as a partial: `params -> torch.optim.Optimizer`.
    model = instantiate(cfg.model, optimizer=optimizer_factory(cfg.optimizer), _convert_="all")
    paired = pairing_tags(model, datamodule.tensors["train"], cfg.seed)  # before any step

    # 3. The trainer: checkpoints of the best validation accuracy and of every epoch's end
    # (`save_last=True` writes last.ckpt only in epochs whose val/acc is a new best).
    workdir = output_dir(cfg)
    checkpoint_dir = (resume_from and resume_from.checkpoint_dir) or workdir / "checkpoints"
    best = ModelCheckpoint(checkpoint_dir, "best-{epoch}", monitor="val/acc", mode="max")
    last = ModelCheckpoint(checkpoint_dir, "last", enable_version_counter=False)
    last_path = Path(checkpoint_dir) / "last.ckpt"
    flush_every_s = cfg.tracking.get("flush_every_s", 5.0)
    logger = MlflowLogger(flush_every_s, spool=workdir / spool.SPOOL_NAME)
    # Jobs that run beside others (joblib, SLURM) print no bar and no line an epoch: theirs
    # would interleave with nothing to tell them apart; each says its result when it ends.
    beside_others = runs_beside_others()
    interactive = sys.stdout.isatty() and not beside_others
    timer = EpochTimer()
    signals = SignalFlag()
    callbacks = [
        *callbacks,
        best,
        last,
        timer,
        StopAtBoundary(signals, last_path),
        DivergenceGuard(cfg.trainer.log_every_n_steps, cfg.diverge_factor),
        RunIdInCheckpoint(logger),
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
            **{
                f"limit_{split}_batches": 0 if limit == 0 else None
                for split, limit in limits.items()
            },
        )
    except InstantiationException as error:  # what validate() cannot know, e.g. a missing package
        cause = error.__cause__
        if not isinstance(cause, ValueError | TypeError | ImportError | MisconfigurationException):
            raise
        first = (str(cause).strip() or type(cause).__name__).splitlines()[0]
        raise ConfigError(f"Lightning's Trainer refuses the trainer.* settings: {first}") from None
    devices.check_launch(cfg.trainer, trainer)  # DDP that cannot start its ranks fails here

    # 4. The MLflow run, and everything from here on inside its lifecycle.
    run_tags = {
        "data.source_used": datamodule.source_used,
        **{f"data.{split}_size": str(n) for split, n in datamodule.sizes.items()},
        "accelerator": type(trainer.accelerator).__name__.removesuffix("Accelerator").lower(),
        "devices": str(trainer.num_devices),
        "precision": str(trainer.precision),
        "torch.threads": str(torch.get_num_threads()),
        **paired,
        **config_tags(cfg),  # tracking.tags (a sweep's stage, trial, ...)
        **(tags or {}),
        **devices.batch_sizes(cfg.data.batch_size, trainer),
        resume.CHECKPOINT_DIR_TAG: str(best.dirpath),
        **owners.owner_tags(),  # so `scripts/runs.py clean-stale` tells dead writers from live
    }
    with contextlib.ExitStack() as held, signals:  # a signal now stops at the next boundary
        if resume_from and resume_from.run_id:
            client, run_id = open_store(cfg.tracking.uri), resume_from.run_id
            held.enter_context(owners.writer_lock(run_id, f"resume={run_id}"))
            resume.check_writer(client.get_run(run_id), f"resume={run_id}", cfg.resume_force)
            run_tags["resume.checkpoint"] = resume_from.ckpt_path
            lifecycle.reopen_run(
                client, run_id, cfg, hydra_overrides(), run_tags, skip_params=resume.OWN_KEYS
            )
            logger.continue_run(resume.history(client, run_id))
        else:
            client, run_id = lifecycle.start_run(cfg, hydra_overrides(), run_tags, parent_run_id)
            held.enter_context(owners.writer_lock(run_id, f"run {run_id}"))
        held.enter_context(owners.Heartbeat(client, run_id))
        owners.warn_stale(client, cfg.tracking.experiment)
        logger.bind(client, run_id)
        name = ""  # the run's name, for its figure: read now, while the store answers
        if rank_zero_only.rank == 0:  # DDP ranks > 0 re-run this file and log into the same run
            name = client.get_run(run_id).info.run_name
            sizes = datamodule.sizes
            where = f"{trainer.num_devices} x {run_tags['accelerator']}"
            print(
                f"MLflow run {run_id} started: {cfg.data.name} ({datamodule.source_used}: "
                f"{sizes['train']} train / {sizes['val']} val / {sizes['test']} test), {where}",
                flush=True,
            )

        def before_end(status: Status) -> None:
            logger.flush()
            if status != Status.FINISHED:  # this stop's last.ckpt, or the newest epoch's
                log_checkpoint(logger.writer, last_path)

        # From here the main thread writes nothing to the store itself: the logger's writer does,
        # in the background, and keeps what the store cannot take in the spool (tracking.spool).
        writer = logger.writer
        if cfg.tracking.log_model and trainer.is_global_zero:  # its first-call costs, meanwhile
            from pipeline.tracking import models

            models.warm_up(datamodule.tensors["test"][0][:2])
        try:
            with lifecycle.ending(client, run_id, lambda: signals.received, before_end, writer):
                ckpt_path = resume_from.ckpt_path if resume_from else None
                with moot_warnings(resuming=ckpt_path is not None, outside_cluster=bool(plugins)):
                    trainer.fit(
                        model, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True
                    )
                signals.check()
                # Read before `test`: restoring the best checkpoint restores the callback's state
                # as it was then, which forgets a last.ckpt written after it.
                saved = {best.best_model_path, last.best_model_path} - {""}
                with moot_warnings(resuming=ckpt_path is not None, outside_cluster=bool(plugins)):
                    tested = best.best_model_path or "best"  # named: `last` is a checkpoint too
                    trainer.test(model, datamodule=datamodule, ckpt_path=tested, verbose=False)
                signals.check()
                logger.flush()
                metrics = {key: points[-1][1] for key, points in logger.history.items()}
                if trainer.is_global_zero:
                    record_artifacts(cfg, writer, name, saved, logger, model, datamodule, workdir)
                    writer.drain()  # recorded (or spooled) before the status is decided
                    writer.check_space()  # an artifact the disk could not take: FAILED
                signals.check()  # a signal while recording: the run ends KILLED all the same
        except BaseException as error:
            if signals.received is not None:
                checkpoint = str(last_path) if last_path.is_file() else None
                done = trainer.current_epoch  # every epoch trained: a plain resume has no work
                trained = done if done >= (trainer.max_epochs or 0) > 0 else None
                raise Stopped(signals.received, run_id, checkpoint, trained) from None
            if isinstance(error, Diverged):
                error.args = (f"MLflow run {run_id} marked FAILED, tag diverged=true: {error}",)
            full = str(error) if isinstance(error, DiskFull) else no_space(error)
            if full is not None:  # a checkpoint, the model, an artifact: one line, not a trace
                if not isinstance(error, DiskFull):
                    full = f"no space left to write ({full})"
                raise DiskFull(
                    f"MLflow run {run_id} marked FAILED: {full}; free disk space there (or "
                    "point hydra.run.dir / tracking.artifact_root elsewhere) and run again"
                ) from None
            raise
    spooled = writer.spool.path if writer is not None and writer.left() else None
    return TrainResult(run_id, metrics, dict(logger.history), spooled)


@contextlib.contextmanager
def moot_warnings(resuming: bool, outside_cluster: bool = False) -> Iterator[None]:
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
        if outside_cluster:  # devices.cluster_plugins() chose the plain environment; yet `fit`
            # asks SLURM's whether to resume a SLURM requeue, which warns wherever `srun` exists.
            warnings.filterwarnings("ignore", "The `srun` command is available on your system")
        yield


@rank_zero_only
def log_checkpoint(writer: spool.Writer, path: Path) -> None:
    if path.is_file():
        writer.log_artifact(path, "checkpoints")


def record_artifacts(cfg, writer, name, checkpoints, logger, model, datamodule, workdir) -> None:
    """Checkpoints, per-sample test correctness, the curves as a PNG (titled with the run's
    `name`; tracking.log_curves), and the best model via mlflow.pytorch (tracking.log_model);
    all queued: the writer sends them."""
    for path in checkpoints:
        writer.log_artifact(path, "checkpoints")
    if cfg.tracking.get("log_curves", True):
        title = f"{name} · {cfg.data.name} ({datamodule.source_used}) · MLflow run {writer.run_id}"
        every = cfg.trainer.log_every_n_steps
        figure = plot_run(logger.history, workdir / "curves.png", title=title, every=every)
        writer.log_artifact(figure)
    if model.test_correct is not None:  # the best checkpoint's, in test order (paired tests)
        np.save(workdir / "test_correct.npy", model.test_correct.numpy())
        writer.log_artifact(workdir / "test_correct.npy")
    if cfg.tracking.log_model:
        writer.log_model(model.net, datamodule.tensors["test"][0][:5])
