"""A user's own optimizer: named on the command line (optimizer=custom optimizer._target_=...),
or as a preset and search space in a config dir of their own (hydra.searchpath), compared with
the built-ins under experiment=fair_comparison. The user's package is examples/custom_optimizer,
which this also keeps runnable."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from conftest import ROOT, make_cfg, run_in_process, runs_in, store_overrides
from mlflow.tracking import MlflowClient

from pipeline.cli.train import main

EXAMPLE = ROOT / "examples" / "custom_optimizer"
USER_CONF = f"hydra.searchpath=[file://{EXAMPLE / 'conf'}]"
TINY = ["data.source=embedded", "trainer.max_epochs=2", "trainer.limit_train_batches=3",
        "tracking.log_model=false", "hydra/launcher=basic"]  # fmt: skip


@pytest.fixture
def user_package(monkeypatch):
    """The example's package importable, as `PYTHONPATH=examples/custom_optimizer` makes it."""
    monkeypatch.syspath_prepend(str(EXAMPLE))


@pytest.mark.slow
def test_a_class_named_on_the_command_line_trains_with_its_own_arguments(user_package, tmp_path):
    overrides = ["optimizer=custom", "optimizer._target_=my_optim.Signum",
                 "+optimizer.momentum=0.5", "trainer.max_epochs=1",
                 "trainer.limit_train_batches=5", "tracking.log_model=false"]  # fmt: skip
    main(make_cfg(tmp_path, *overrides))
    (run,) = runs_in(tmp_path / "mlruns")
    assert run.info.status == "FINISHED"
    assert run.data.params["optimizer.class"] == "my_optim.Signum"
    assert run.data.params["optimizer.momentum"] == "0.5"
    assert run.data.tags["optimizer"] == "custom"
    assert 0 < run.data.metrics["test/acc"] <= 1


def test_a_bad_argument_of_the_users_class_is_refused_before_any_run(
    user_package, tmp_path, capsys
):
    overrides = ["optimizer=custom", "optimizer._target_=my_optim.Signum", "+optimizer.beta=0.5"]
    with pytest.raises(SystemExit) as stop:
        main(make_cfg(tmp_path, *overrides))
    assert stop.value.code == 2
    message = capsys.readouterr().err.strip()
    assert message == (
        "error: optimizer.beta is not an argument of Signum; it takes lr, momentum, weight_decay"
    )
    assert runs_in(tmp_path / "mlruns") == []


def rows(sweep_dir: Path) -> list[dict[str, str]]:
    (path,) = sweep_dir.glob("report*/report.csv")
    with open(path) as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_a_users_optimizer_runs_through_a_fair_comparison_from_its_own_config_dir(
    user_package, tmp_path
):
    """signum from the example's config dir (preset + search space, which also tunes the
    schedule) against sgd: every stage of both runs, and the report ranks both."""
    store = tmp_path / "mlruns"
    status = run_in_process(
        "-m", "experiment=fair_comparison", USER_CONF,
        "+search_space@hydra.sweeper.search_space=signum",
        "hydra.sweeper.optimizers=[sgd,signum]", "hydra.sweeper.trials=3",
        "hydra.sweeper.replicate_seeds=[1,2]", "hydra.sweeper.searches=1", *TINY,
        *store_overrides(store),
        f"hydra.sweep.dir={tmp_path}/sweep",
    )  # fmt: skip
    assert status == 0
    client = MlflowClient(f"sqlite:///{store}/mlflow.db")
    runs = runs_in(store)
    (parent,) = [r for r in runs if r.data.tags.get("sweep.role") == "parent"]
    children = [r for r in runs if r is not parent]
    signum = [r for r in children if r.data.tags["protocol.optimizer"] == "signum"]
    stages = sorted(r.data.tags["protocol.stage"] for r in signum)
    assert stages == ["default"] * 2 + ["replicate"] * 2 + ["tune"] * 3
    assert all(r.info.status == "FINISHED" for r in children) and len(children) == 14
    assert {r.data.params["optimizer.class"] for r in signum} == {"my_optim.Signum"}
    tuned = [r for r in signum if r.data.tags["protocol.stage"] == "tune"]
    # The sampler (seeded by trial number) draws both schedules in these three trials.
    assert {r.data.params["scheduler.name"] for r in tuned} == {"constant", "cosine"}
    assert all(r.data.params["optimizer.lr"] != "0.0001" for r in tuned)  # drawn, not default
    space = parent.data.params["protocol.search_space.signum"]
    assert "choice(constant, cosine)" in space
    assert "protocol.selected.signum" in client.get_run(parent.info.run_id).data.tags
    report = {row["optimizer"]: row for row in rows(tmp_path / "sweep")}
    assert set(report) == {"sgd", "signum"}
    selected = [r for r in signum if r.data.tags["protocol.stage"] == "replicate"][0]
    assert report["signum"]["selected.scheduler.name"] == selected.data.params["scheduler.name"]


@pytest.mark.slow
def test_a_search_space_given_on_the_command_line(user_package, tmp_path):
    """The search space as one command-line override instead of a file."""
    store = tmp_path / "mlruns"
    status = run_in_process(
        "-m", "experiment=fair_comparison", USER_CONF,
        '+hydra.sweeper.search_space.signum={optimizer.lr:"tag(log, interval(1e-5, 1e-2))"}',
        "hydra.sweeper.optimizers=[signum]", "hydra.sweeper.trials=1",
        "hydra.sweeper.replicate_seeds=[1]", "hydra.sweeper.searches=1", *TINY,
        *store_overrides(store),
        f"hydra.sweep.dir={tmp_path}/sweep",
    )  # fmt: skip
    assert status == 0
    runs = runs_in(store)
    stages = sorted(r.data.tags.get("protocol.stage", "parent") for r in runs)
    assert stages == ["default", "parent", "replicate", "tune"]
    (tune,) = [r for r in runs if r.data.tags.get("protocol.stage") == "tune"]
    assert 1e-5 <= float(tune.data.params["optimizer.lr"]) <= 1e-2


def test_a_comparison_with_an_optimizer_no_config_dir_has_is_refused(tmp_path, capsys):
    store = tmp_path / "mlruns"
    status = run_in_process(
        "-m", "experiment=fair_comparison", "hydra.sweeper.optimizers=[sgd,signum]",
        *TINY, *store_overrides(store), f"hydra.sweep.dir={tmp_path}/sweep",
    )  # fmt: skip
    assert status == 2
    message = capsys.readouterr().err.strip().splitlines()[-1]
    assert message.startswith("error: hydra.sweeper.optimizers: no optimizer preset 'signum'")
    assert "hydra.searchpath" in message
    assert runs_in(store) == []
