"""The training path, top to bottom: check → data → model → MLflow run → fit → test → record."""

from __future__ import annotations

import logging
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytorch_lightning as pl
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.utilities import rank_zero_only

from pipeline import datacache, devices, faults, resume, runs, sweep, tracking
from pipeline.callbacks import EpochLine, EpochTimer
from pipeline.config import validate
from pipeline.optim import optimizer_factory
from pipeline.report import plot_run

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


@dataclass
class TrainResult:
    run_id: str
    metrics: dict[str, float]


def hydra_overrides() -> list[str]:
    """The command-line overrides of this job (empty outside a Hydra app)."""
    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def output_dir(cfg: DictConfig) -> Path:
    try:
        return Path(cfg.paths.output_dir)
    except Exception:  # ${hydra:...} cannot resolve outside a Hydra app
        return Path(tempfile.mkdtemp(prefix="pipeline-"))


def train(cfg: DictConfig, parent_run_id: str | None = None) -> TrainResult:
    """Train one model as `cfg` says and record it as one MLflow run."""
    # 1. Everything that can be wrong with the input fails here, before any run exists.
    cfg, resume_from = resume.prepare(cfg, hydra_overrides())  # resume=<run id> / ckpt_path=
    validate(cfg)
    devices.set_threads(cfg.get("torch_threads"))
    pl.seed_everything(cfg.seed, workers=True)
    # Lightning's batches are groups of minibatches here (data.Groups); the limits, which count
    # minibatches, are applied by the data module instead of by Lightning.
    limits = {split: cfg.trainer.get(f"limit_{split}_batches") for split in SPLITS}
    datamodule = instantiate(cfg.data, seed=cfg.seed, limit_batches=limits)
    datacache.load(datamodule)  # a missing or corrupt data source also fails before the run

    # 2. The model gets the optimizer as a partial: `params -> torch.optim.Optimizer`.
    model = instantiate(cfg.model, optimizer=optimizer_factory(cfg.optimizer), _convert_="all")

    # 3. The trainer: checkpoints of the best validation accuracy and of the latest epoch,
    # metrics into MLflow. (`save_last=True` would write last.ckpt only in epochs whose val/acc
    # is a new best: a stopped run would go on from an older epoch.)
    workdir = output_dir(cfg)
    checkpoint_dir = (resume_from and resume_from.checkpoint_dir) or workdir / "checkpoints"
    best = ModelCheckpoint(checkpoint_dir, "best-{epoch}", monitor="val/acc", mode="max")
    last = ModelCheckpoint(checkpoint_dir, "last", enable_version_counter=False)  # every epoch
    logger = tracking.MlflowLogger()
    interactive = sys.stdout.isatty()
    timer = EpochTimer()
    interrupt = faults.GracefulStop(checkpoint_dir)
    divergence = faults.DivergenceGuard(cfg.trainer.log_every_n_steps, cfg.diverge_factor)
    callbacks = [best, last, timer, interrupt, divergence, resume.RunIdInCheckpoint(logger)]
    callbacks += [] if interactive else [EpochLine(timer)]
    trainer: pl.Trainer = instantiate(
        cfg.trainer,
        logger=logger,
        callbacks=callbacks,
        enable_progress_bar=interactive,
        enable_model_summary=False,
        default_root_dir=str(workdir),
        **{f"limit_{split}_batches": 0 if limit == 0 else None for split, limit in limits.items()},
    )
    devices.check_launch(trainer)  # DDP where it cannot start its ranks fails here, before the run

    # 4. The MLflow run: params, tags, config; it ends FINISHED, or FAILED with the traceback.
    tags = {
        "data.source_used": datamodule.source_used,
        **{f"data.{split}_size": str(n) for split, n in datamodule.sizes.items()},
        "accelerator": type(trainer.accelerator).__name__.removesuffix("Accelerator").lower(),
        "devices": str(trainer.num_devices),
        "precision": str(trainer.precision),
        "torch.threads": str(torch.get_num_threads()),
        **sweep.job_tags(),
        **devices.batch_sizes(cfg.data.batch_size, trainer),
        resume.CHECKPOINT_DIR_TAG: str(best.dirpath),
        **runs.owner_tags(),  # so `scripts/runs.py clean-stale` tells dead writers from live ones
    }
    interrupt.arm()  # from here a signal ends the run KILLED, with a checkpoint
    if resume_from and resume_from.run_id:
        client, run_id = resume.reopen(cfg, resume_from, hydra_overrides(), tags)
        logger.continue_run(resume.history(client, run_id))
    else:
        client, run_id = tracking.start_run(cfg, hydra_overrides(), tags, parent_run_id)
    runs.warn_stale(client, cfg.tracking.experiment)
    logger.bind(client, run_id)
    if rank_zero_only.rank == 0:  # DDP ranks > 0 re-run this file and log into the same run
        print(f"MLflow run {run_id} started", flush=True)
    try:
        ckpt_path = resume_from.ckpt_path if resume_from else None
        trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
        # Read before `test`: restoring the best checkpoint restores the callback's state as it
        # was then, which forgets a `last.ckpt` written after it (best epoch = first epoch).
        saved = {best.best_model_path, last.best_model_path} - {""}
        trainer.test(model, datamodule=datamodule, ckpt_path="best", verbose=False)
        logger.flush()
        metrics = {key: points[-1][1] for key, points in logger.history.items()}
        if trainer.is_global_zero:
            record_artifacts(cfg, client, run_id, saved, logger, model, datamodule, workdir)
    except BaseException as error:
        logger.flush()
        # last.ckpt: this stop's, or the newest epoch's (of any session of the run)
        newest = interrupt.path if interrupt.path.is_file() else None
        raise faults.end_failed_run(client, run_id, error, interrupt, newest) from None
    tracking.end_run(client, run_id, "FINISHED")
    interrupt.restore()
    return TrainResult(run_id, metrics)


def record_artifacts(cfg, client, run_id, checkpoints, logger, model, datamodule, workdir) -> None:
    """Checkpoints, the curves as a PNG, and the best model via mlflow.pytorch."""
    for path in checkpoints:
        client.log_artifact(run_id, path, "checkpoints")
    figure = plot_run(logger.history, workdir / "curves.png", title=cfg.optimizer.name)
    client.log_artifact(run_id, str(figure))
    if cfg.tracking.log_model:
        example = datamodule.tensors["test"][0][:5]
        tracking.log_model(cfg.tracking.uri, run_id, model.net, example)


def main(cfg: DictConfig) -> float:
    """Entry used by train.py: friendly errors, a summary at the end; returns val/acc for sweeps."""
    from pipeline.config import ConfigError
    from pipeline.data import DataError

    try:
        result = train(cfg, parent_run_id=sweep.parent_run_id())
    except (ConfigError, DataError) as error:
        print(f"error: {error}", file=sys.stderr)
        if sweep.in_multirun():
            raise  # Hydra records the failed job and runs the sweep's other jobs
        sys.exit(2)
    except faults.Interrupted as stop:
        print(stop, file=sys.stderr)
        sys.exit(stop.exit_code)
    except faults.Diverged as error:
        print(f"error: {error}", file=sys.stderr)
        if sweep.in_multirun():  # the other jobs carry on; the run is tagged diverged=true
            return 0.0  # the worst accuracy, so Optuna steers away (it cannot take NaN)
        sys.exit(3)
    if rank_zero_only.rank > 0:  # DDP: rank 0 reports for all ranks
        return float("nan")
    test_acc = result.metrics.get("test/acc", float("nan"))
    print(f"MLflow run {result.run_id}: test/acc {test_acc:.4f}")
    if str(cfg.tracking.uri).startswith(("http://", "https://")):
        print(f"See it: {cfg.tracking.uri}")  # the tracking server serves the UI too
    else:
        print(f"See it: make ui   (or: mlflow ui --backend-store-uri {cfg.tracking.uri})")
    return result.metrics.get("val/acc", float("nan"))
