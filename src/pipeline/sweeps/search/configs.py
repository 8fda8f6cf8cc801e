"""The sweepers' configs, registered in Hydra's ConfigStore under `hydra/sweeper`, as Hydra's own
plugins do (hydra-optuna-sweeper's config.py): `hydra/sweeper=optuna` (hparams_search) and
`hydra/sweeper=protocol` (experiment=fair_comparison). Structured configs: Hydra checks the
types of `hydra.sweeper.*` overrides; the sweepers check ranges.

Imported by Hydra's plugin discovery for every command (src/hydra_plugins/pipeline_sweepers):
dataclasses only, nothing slow.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore

SIX = ["sgd", "momentum", "adagrad", "rmsprop", "adam", "adadelta"]


def tpe(seed: int = 42) -> dict[str, Any]:
    return {"_target_": "optuna.samplers.TPESampler", "seed": seed}


@dataclass
class OptunaSweeperConf:
    """One Optuna study over `params` (Hydra's sweep syntax) for the command's optimizer."""

    _target_: str = "hydra_plugins.pipeline_sweepers.OptunaSweeper"
    params: dict[str, str] = field(default_factory=dict)
    n_trials: int = 20  # the budget: trials numbered 0..n_trials-1, whatever their end
    n_jobs: int = 1  # jobs per batch (run in parallel with hydra/launcher=joblib)
    sampler: Any = field(default_factory=tpe)  # its seed is offset by the trial number
    storage: str | None = None  # null: tracking.optuna_storage, else optuna.db by the store
    study_name: str | None = None  # null: <sweep key>-<optimizer>, found again by the same command
    poll_s: float = 5.0  # how often to look again while other workers finish their trials


@dataclass
class ProtocolSweeperConf:
    """experiment=fair_comparison: defaults, tuning and replicates for each optimizer."""

    _target_: str = "hydra_plugins.pipeline_sweepers.ProtocolSweeper"
    optimizers: list[str] = field(default_factory=lambda: list(SIX))
    trials: int = 20  # tuning budget per search, failed and diverged trials included
    # Independent searches per optimizer (own sampler seed, own seeds), `trials` each; each
    # search's selection runs on the replicate seeds (+ 1000·r): the verdicts cover searches.
    searches: int = 1
    tuning_seeds: list[int] = field(default_factory=lambda: [0])  # each trial trains once per seed
    replicate_seeds: list[int] = field(default_factory=lambda: [1, 2, 3, 4, 5])
    search_space: dict[str, dict[str, str]] = field(default_factory=dict)  # conf/search_space/
    sampler: Any = field(default_factory=tpe)
    test_during_tuning: bool = False  # false: tuning runs never evaluate the test split
    # More overrides for every tuning run: what a trial need not record (its metrics, params and
    # checkpoints stay); [] records trials like any run.
    tuning_overrides: list[str] = field(
        default_factory=lambda: ["tracking.log_model=false", "tracking.log_curves=false"]
    )
    # For the report: steps and seconds until validation accuracy first reaches it. null: the
    # data set's own (protocol.TARGETS: 0.9 for MNIST, 0.85 for Fashion-MNIST).
    target_val_acc: float | None = None
    storage: str | None = None
    n_jobs: int = 1
    poll_s: float = 5.0
    params: dict[str, str] | None = None  # unused; Hydra's callbacks read hydra.sweeper.params


ConfigStore.instance().store(
    group="hydra/sweeper", name="optuna", node=OptunaSweeperConf, provider="pipeline"
)
ConfigStore.instance().store(
    group="hydra/sweeper", name="protocol", node=ProtocolSweeperConf, provider="pipeline"
)
