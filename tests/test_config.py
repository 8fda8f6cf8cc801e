"""Every preset composes, instantiates, and (for optimizers) takes a real step."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import CONF, ROOT, make_cfg
from hydra.utils import instantiate
from lion_pytorch import Lion
from omegaconf import OmegaConf
from prodigyopt import Prodigy
from schedulefree import AdamWScheduleFree

from pipeline.config.checks import validate
from pipeline.errors import ConfigError
from pipeline.model.mlp import classification_loss
from pipeline.optim.factory import optimizer_factory
from pipeline.optim.muon import MuonAdamW

# `custom` names no class until the user does (tests/test_custom_optimizer.py).
OPTIMIZERS = sorted(p.stem for p in (CONF / "optimizer").glob("*.yaml") if p.stem != "custom")

# The presets' defaults, as the issue and the classic teaching material state them.
EXPECTED = {
    "sgd": (torch.optim.SGD, {"lr": 1e-2, "momentum": 0.0}),
    "momentum": (torch.optim.SGD, {"lr": 1e-2, "momentum": 0.9, "nesterov": False}),
    "nesterov": (torch.optim.SGD, {"lr": 1e-2, "momentum": 0.9, "nesterov": True}),
    "adagrad": (torch.optim.Adagrad, {"lr": 1e-2}),
    "rmsprop": (torch.optim.RMSprop, {"lr": 1e-3, "alpha": 0.9}),
    "adam": (torch.optim.Adam, {"lr": 1e-3}),
    "adamw": (torch.optim.AdamW, {"lr": 1e-3, "weight_decay": 1e-2}),
    "adadelta": (torch.optim.Adadelta, {"lr": 1.0, "rho": 0.9}),
    # Today's (docs/optimizers.md#todays-optimizers): the defaults of their sources.
    "nadam": (torch.optim.NAdam, {"lr": 2e-3, "momentum_decay": 4e-3}),
    "radam": (torch.optim.RAdam, {"lr": 1e-3}),
    "adamax": (torch.optim.Adamax, {"lr": 2e-3}),
    "muon": (MuonAdamW, {"lr": 1e-3, "weight_decay": 0.1, "momentum": 0.95, "ns_steps": 5}),
    "lion": (Lion, {"lr": 1e-4, "betas": (0.9, 0.99)}),
    "schedulefree_adamw": (AdamWScheduleFree, {"lr": 2.5e-3, "warmup_steps": 0}),
    "prodigy": (Prodigy, {"lr": 1.0, "d_coef": 1.0}),
}


def test_all_issue_presets_exist():
    assert set(OPTIMIZERS) == set(EXPECTED)


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_optimizer_preset_instantiates_and_steps(tmp_path, name):
    cfg = make_cfg(tmp_path, f"optimizer={name}")
    validate(cfg)
    model = instantiate(cfg.model, optimizer=optimizer_factory(cfg.optimizer), _convert_="all")
    optimizer = model.configure_optimizers()
    cls, defaults = EXPECTED[name]
    assert type(optimizer) is cls
    for key, value in defaults.items():  # MuonAdamW's values live in its (Muon) first group
        assert (optimizer.defaults or optimizer.param_groups[0])[key] == value, key

    torch.manual_seed(0)
    x, y = torch.randn(64, 784), torch.randint(0, 10, (64,))
    before = [p.detach().clone() for p in model.parameters()]
    loss = classification_loss(model(x), y, cfg.model.loss)
    loss.backward()
    if hasattr(optimizer, "train"):  # Schedule-Free steps in train mode only
        optimizer.train()
    optimizer.step()
    changed = [not torch.equal(b, p) for b, p in zip(before, model.parameters(), strict=True)]
    assert all(changed), f"{name}: some parameters did not move after one step"


def test_optimizer_argument_overrides_reach_the_optimizer(tmp_path):
    cfg = make_cfg(tmp_path, "optimizer=adam", "optimizer.weight_decay=1e-4", "optimizer.lr=0.02")
    optimizer = optimizer_factory(cfg.optimizer)([torch.nn.Parameter(torch.zeros(3))])
    assert optimizer.defaults["weight_decay"] == 1e-4
    assert optimizer.defaults["lr"] == 0.02


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist"])
def test_data_preset_instantiates(tmp_path, name):
    cfg = make_cfg(tmp_path, f"data={name}")
    datamodule = instantiate(cfg.data, seed=cfg.seed)
    assert datamodule.name == name
    assert datamodule.batch_size == 64
    assert Path(datamodule.root).is_absolute()


@pytest.mark.parametrize("name", ["cpu", "gpu", "ddp"])
def test_trainer_preset_composes(tmp_path, name):
    cfg = make_cfg(tmp_path, f"trainer={name}")
    assert cfg.trainer.max_epochs == 5
    assert cfg.trainer._target_ == "pytorch_lightning.Trainer"


def test_default_store_is_absolute_under_project_root(tmp_path, monkeypatch):
    """Whatever the working directory, the default store is <project>/mlruns/mlflow.db."""
    from hydra import compose, initialize_config_dir

    monkeypatch.chdir(tmp_path)
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        cfg = compose("train")
    assert cfg.tracking.uri == f"sqlite:///{ROOT}/mlruns/mlflow.db"
    assert cfg.tracking.artifact_root == f"{ROOT}/mlruns/artifacts"
    assert cfg.data.root == f"{ROOT}/data"


@pytest.mark.parametrize(
    "override, named",
    [
        ("optimizer.lr=abc", "optimizer.lr='abc'"),
        ("optimizer.lr=-1", "optimizer.lr=-1"),
        ("optimizer.lr=0", "optimizer.lr=0"),
        ("data.batch_size=0", "data.batch_size=0"),
        ("data.batch_size=1.5", "data.batch_size=1.5"),
        ("model.activation=gelu", "model.activation='gelu'"),
        ("data.source=web", "data.source='web'"),
        ("data.val_size=1.0", "data.val_size=1.0"),
        ("trainer.max_epochs=0", "trainer.max_epochs=0"),
    ],
)
def test_bad_values_are_named(tmp_path, override, named):
    cfg = make_cfg(tmp_path, override)
    with pytest.raises(ConfigError) as error:
        validate(cfg)
    assert named in str(error.value)
    assert "e.g." in str(error.value)  # every message shows a fix


def test_unknown_optimizer_argument_is_refused(tmp_path):
    cfg = make_cfg(tmp_path, "optimizer=adam", "+optimizer.momentum=0.9")
    with pytest.raises(ConfigError, match="optimizer.momentum is not an argument of Adam"):
        validate(cfg)


def test_the_default_schedule_is_constant_and_builds_no_scheduler(tmp_path):
    cfg = make_cfg(tmp_path)
    assert OmegaConf.to_container(cfg.scheduler) == {"name": "constant"}
    model = instantiate(cfg.model, optimizer=optimizer_factory(cfg.optimizer), _convert_="all")
    assert isinstance(model.configure_optimizers(), torch.optim.SGD)  # no lr_scheduler dict


def test_mlflow_tracking_uri_decides_where_runs_go_unless_tracking_uri_is_given(monkeypatch):
    """MLflow's convention: the variable names the store; an explicit tracking.uri= wins."""
    from hydra import compose, initialize_config_dir

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)

    def store(*overrides: str) -> tuple[str, str | None]:  # resolved now, not when read
        tracking = compose("train", overrides=list(overrides)).tracking
        return tracking.uri, tracking.artifact_root

    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        default = store()
        monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking.example:5000")
        from_env = store()
        explicit = store("tracking.uri=sqlite:////tmp/s/mlflow.db")
    assert default == (f"sqlite:///{ROOT}/mlruns/mlflow.db", f"{ROOT}/mlruns/artifacts")
    assert from_env == ("http://tracking.example:5000", None)
    assert explicit == ("sqlite:////tmp/s/mlflow.db", f"{ROOT}/mlruns/artifacts")


def test_a_search_range_on_the_command_line_replaces_the_presets():
    from optuna.distributions import FloatDistribution

    from pipeline.sweeps.search.sweeper import split

    preset = {"optimizer.lr": "tag(log, interval(1e-5, 1.0))", "optimizer.momentum": "0.9"}
    space, fixed = split(preset, ["optimizer=sgd", "optimizer.lr=tag(log, interval(1e-4, 100.0))"])
    assert space["optimizer.lr"] == FloatDistribution(1e-4, 100.0, log=True)
    assert space["optimizer.momentum"] == "0.9" and fixed == ["optimizer=sgd"]
