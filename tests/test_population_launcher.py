"""`hydra/launcher=population`: a plain multirun's jobs as one population, recorded as a
one-by-one sweep records them."""

from __future__ import annotations

import os
import signal

import pytest
from test_sweep import report_rows, sweep

pytestmark = pytest.mark.slow

GRID = ["optimizer=adam", "optimizer.lr=0.001,0.01", "seed=1,2", "tracking.log_curves=false"]
ONLY_OURS = {"population", "population.size", "population.member"}
THEIRS_ONLY: set[str] = set()  # a member's checkpoint.dir is its population's checkpoint folder


def by_name(children):
    return {r.info.run_name: r for r in children}


def test_population_sweep_records_what_a_one_by_one_sweep_records(tmp_path, capsys):
    client, _, alone, _ = sweep(tmp_path / "basic", *GRID, capsys=capsys)
    rows_alone = report_rows(tmp_path / "basic")
    client_pop, _, together, output = sweep(
        tmp_path / "pop", *GRID, "hydra/launcher=population", capsys=capsys
    )
    assert "population of 4: #0, #1, #2, #3" in output
    assert "0 alone" in output
    alone, together = by_name(alone), by_name(together)

    def same_store(values: dict[str, str]) -> dict[str, str]:  # the two sweeps' own stores
        return {
            k: v.replace(str(tmp_path / "pop"), str(tmp_path / "basic")) for k, v in values.items()
        }

    assert sorted(together) == sorted(alone) and len(alone) == 4
    assert len({r.data.tags["population"] for r in together.values()}) == 1
    for name, ours in together.items():
        theirs = alone[name]
        assert ours.info.status == theirs.info.status == "FINISHED"
        assert same_store(ours.data.params) == theirs.data.params
        assert set(ours.data.metrics) == set(theirs.data.metrics)
        assert set(ours.data.tags) - set(theirs.data.tags) == ONLY_OURS
        assert set(theirs.data.tags) - set(ours.data.tags) == THEIRS_ONLY
        for tag in ("overrides", "sweep.job", "pairing.init_sha", "pairing.order_sha"):
            assert same_store(ours.data.tags)[tag] == theirs.data.tags[tag], tag
        # Float32 on a CPU: the members train bit for bit as the single runs.
        for key in ("val/acc", "test/acc", "train/acc"):
            assert ours.data.metrics[key] == theirs.data.metrics[key], (name, key)
        files = {f.path for f in client_pop.list_artifacts(ours.info.run_id)}
        assert files == {f.path for f in client.list_artifacts(theirs.info.run_id)} - {
            "checkpoints"
        }
    # The sweep's report is the same, but for the epoch times and the last bit of the loss: a
    # step's loss is its minibatch's mean summed in another order (its gradient is not).
    rows_pop = report_rows(tmp_path / "pop")
    assert len(rows_pop) == len(rows_alone) == 2
    for ours, theirs in zip(rows_pop, rows_alone, strict=True):
        ours_loss, theirs_loss = (float(r.pop("final_train_loss")) for r in (ours, theirs))
        assert ours_loss == pytest.approx(theirs_loss, rel=1e-6)
        ours.pop("epoch_time_s", None), theirs.pop("epoch_time_s", None)
        assert ours == theirs


def test_jobs_that_cannot_be_batched_run_alone_and_say_why(tmp_path, capsys):
    """Batch size 32 and 64 cannot share a population; max_members=2 caps each at 2 of 3."""
    _, _, children, output = sweep(
        tmp_path,
        "optimizer=adam",
        "data.batch_size=32,64",
        "seed=1,2,3",
        "hydra/launcher=population",
        "hydra.launcher.max_members=2",
        "tracking.log_curves=false",
        capsys=capsys,
    )
    assert "Launching 6 jobs: 2 population(s), 2 alone" in output
    assert output.count("(alone: the last of its group after max_members)") == 2
    assert len(children) == 6 and all(r.info.status == "FINISHED" for r in children)
    populations = [r.data.tags.get("population") for r in children]
    assert populations.count(None) == 2 and len(set(populations) - {None}) == 2
    for population in set(populations) - {None}:  # its members share their batch size
        sizes = {
            r.data.params["data.batch_size"]
            for r in children
            if r.data.tags.get("population") == population
        }
        assert len(sizes) == 1


def test_a_lone_job_says_why(tmp_path, capsys):
    _, _, children, output = sweep(
        tmp_path,
        "optimizer=adam,sgd",
        "hydra/launcher=population",
        "tracking.log_curves=false",
        capsys=capsys,
    )
    assert output.count("(alone: no other job differs from it only in optimizer.* and seed)") == 2
    assert len(children) == 2 and all(r.info.status == "FINISHED" for r in children)


def test_an_interrupted_population_goes_on_with_the_same_command(tmp_path, capsys, monkeypatch):
    """SIGTERM mid-population: the sweep exits 143, every member KILLED; the same command then
    continues those runs from the population's checkpoint (tests/test_population_resume.py
    holds the result to an unbroken sweep's)."""
    from conftest import run_in_process, store_overrides
    from mlflow.tracking import MlflowClient
    from test_sweep import TINY

    from pipeline.population.module import PopulationModule

    original = PopulationModule.training_step

    def step_then_signal(self, group, index):
        original(self, group, index)
        os.kill(os.getpid(), signal.SIGTERM)

    grid = ["optimizer=adam", "seed=1,2", "hydra/launcher=population", "tracking.log_curves=false"]
    store = tmp_path / "mlruns"
    monkeypatch.setattr(PopulationModule, "training_step", step_then_signal)
    args = ["-m", *grid, *TINY, *store_overrides(store), f"hydra.sweep.dir={tmp_path}/sweep"]
    assert run_in_process(*args) == 143
    assert "the population's MLflow runs are marked KILLED" in capsys.readouterr().err
    client = MlflowClient(f"sqlite:///{store}/mlflow.db")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    killed = [r for r in runs if "population" in r.data.tags]
    assert len(killed) == 2 and {r.info.status for r in killed} == {"KILLED"}

    monkeypatch.setattr(PopulationModule, "training_step", original)
    _, _, children, output = sweep(tmp_path, *grid, capsys=capsys)
    assert output.count("Continuing the job's interrupted MLflow run") == 2
    assert "population of 2: #0, #1" in output
    assert len(children) == 2 and {r.info.status for r in children} == {"FINISHED"}
    assert {r.info.run_id for r in children} == {r.info.run_id for r in killed}


@pytest.mark.parametrize(
    ("bad", "says"),
    [
        ("hydra.launcher.max_members=0", "error: hydra.launcher.max_members=0: a population"),
        ("optimizer.lr=0.01,-1", "error: optimizer.lr=-1"),
    ],
)
def test_bad_input_to_a_population_sweep_creates_nothing(tmp_path, capsys, bad, says):
    from conftest import run_in_process, runs_in, store_overrides
    from test_sweep import TINY

    store = tmp_path / "mlruns"
    args = ["-m", "hydra/launcher=population", bad, *TINY, *store_overrides(store)]
    assert run_in_process(*args, f"hydra.sweep.dir={tmp_path}/sweep") == 2
    assert says in capsys.readouterr().err
    assert runs_in(store) == []
