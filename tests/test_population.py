"""Populations against the runs they replace, trained one by one through the real single-run path.

Float64 (`trainer.precision=64-true`): every recorded train/loss (each step's) and val/acc of a
full epoch of the embedded digits (57 steps) equal to 1e-9, for every optimizer preset. Float32:
the first 100 steps' losses within 1e-4 relative, final accuracies within 0.5 points.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import make_cfg
from mlflow.tracking import MlflowClient
from omegaconf import open_dict

from pipeline.population.run import Member, batch_problem, train_population
from pipeline.training.run import train

pytestmark = pytest.mark.slow

QUIET = ["tracking.log_model=false", "tracking.log_curves=false", "trainer.log_every_n_steps=1"]
# Per preset: 4 members differing in lr, seed and one other hyperparameter.
PRESETS = {
    "sgd": [("0.05", "optimizer.weight_decay", v) for v in ("0", "0.001", "0.01", "0.0001")],
    "momentum": [("0.01", "optimizer.momentum", v) for v in ("0.9", "0.5", "0.8", "0.0")],
    "nesterov": [("0.01", "optimizer.momentum", v) for v in ("0.9", "0.5", "0.8", "0.7")],
    "adagrad": [("0.02", "optimizer.lr_decay", v) for v in ("0", "0.01", "0.001", "0.1")],
    "rmsprop": [("0.0005", "optimizer.alpha", v) for v in ("0.9", "0.99", "0.8", "0.95")],
    "adam": [
        ("0.001", "optimizer.betas", v)
        for v in ("[0.9,0.999]", "[0.8,0.99]", "[0.5,0.9]", "[0.95,0.999]")
    ],
    "adamw": [("0.001", "optimizer.weight_decay", v) for v in ("0.01", "0.1", "0", "0.5")],
    "adadelta": [("1.0", "optimizer.rho", v) for v in ("0.9", "0.95", "0.8", "0.99")],
    "nadam": [("0.002", "optimizer.momentum_decay", v) for v in ("0.004", "0.01", "0.002", "0")],
    "radam": [
        ("0.001", "optimizer.betas", v)
        for v in ("[0.9,0.999]", "[0.8,0.99]", "[0.5,0.9]", "[0.95,0.999]")
    ],
    "adamax": [("0.002", "optimizer.weight_decay", v) for v in ("0", "0.001", "0.01", "0.1")],
    "lion": [("0.0001", "optimizer.weight_decay", v) for v in ("0", "0.1", "0.01", "1.0")],
    "muon": [("0.001", "optimizer.momentum", v) for v in ("0.95", "0.9", "0.8", "0.5")],
}
LR_SCALE = ("1", "2", "0.5", "1.5")  # members' lr: the preset's, times these


def member_cfgs(tmp_path, preset: str, *extra: str) -> list[tuple]:
    cfgs = []
    for k, ((lr, key, value), scale) in enumerate(zip(PRESETS[preset], LR_SCALE, strict=True)):
        overrides = [
            f"optimizer={preset}",
            f"optimizer.lr={float(lr) * float(scale):g}",
            f"{key}={value}",
            f"seed={k + 1}",
        ]
        cfg = make_cfg(tmp_path, *QUIET, *extra, *overrides)
        with open_dict(cfg):
            cfg.paths.output_dir = str(tmp_path / f"member{k}")
        cfgs.append((cfg, overrides))
    return cfgs


def single_runs(tmp_path, cfgs):
    results = []
    for k, (cfg, _) in enumerate(cfgs):
        cfg = cfg.copy()
        with open_dict(cfg):
            cfg.paths.output_dir = str(tmp_path / f"single{k}")
        results.append(train(cfg))
    return results


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_float64_population_equals_single_runs(tmp_path, preset):
    cfgs = member_cfgs(tmp_path, preset, "trainer.max_epochs=1", "trainer.precision=64-true")
    population = train_population([Member(c, o) for c, o in cfgs], workdir=tmp_path / "pop")
    singles = single_runs(tmp_path, cfgs)
    for member, single in zip(population, singles, strict=True):
        assert member.status == "FINISHED"
        for key in ("train/loss", "val/acc", "val/loss", "train/loss_epoch", "test/acc"):
            steps = [s for s, _ in single.history[key]]
            assert [s for s, _ in member.history[key]] == steps, key
            np.testing.assert_allclose(
                [v for _, v in member.history[key]],
                [v for _, v in single.history[key]],
                rtol=0,
                atol=1e-9,
                err_msg=key,
            )
        assert len(single.history["train/loss"]) == 57  # every step of the epoch


def test_float64_population_follows_the_schedule_of_single_runs(tmp_path):
    """A non-constant schedule: each member's lr is its own lr times the shared schedule's
    factor, step by step (`train/lr`, recorded as a single run records it)."""
    cfgs = member_cfgs(
        tmp_path,
        "adam",
        "trainer.max_epochs=1",
        "trainer.precision=64-true",
        "scheduler=warmup_cosine",
        "scheduler.warmup_fraction=0.2",
    )
    population = train_population([Member(c, o) for c, o in cfgs], workdir=tmp_path / "pop")
    singles = single_runs(tmp_path, cfgs)
    for member, single in zip(population, singles, strict=True):
        for key in ("train/lr", "train/loss", "val/acc", "test/acc"):
            assert [s for s, _ in member.history[key]] == [s for s, _ in single.history[key]]
            np.testing.assert_allclose(
                [v for _, v in member.history[key]],
                [v for _, v in single.history[key]],
                rtol=0,
                atol=1e-9,
                err_msg=key,
            )
        lrs = [v for _, v in single.history["train/lr"]]
        assert len(lrs) == 57 and lrs[0] < lrs[11] > lrs[-1]  # warmup, then decay
    assert population[0].history["train/lr"][11][1] != population[1].history["train/lr"][11][1]


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_float32_population_tracks_single_runs(tmp_path, preset):
    cfgs = member_cfgs(tmp_path, preset, "trainer.max_epochs=2", "trainer.limit_train_batches=50")
    population = train_population([Member(c, o) for c, o in cfgs], workdir=tmp_path / "pop")
    singles = single_runs(tmp_path, cfgs)
    for member, single in zip(population, singles, strict=True):
        losses = [v for _, v in member.history["train/loss"]]
        assert len(losses) == 100
        np.testing.assert_allclose(losses, [v for _, v in single.history["train/loss"]], rtol=1e-4)
        for key in ("val/acc", "test/acc"):
            assert abs(member.metrics[key] - single.metrics[key]) <= 0.005, key


def test_records_match_a_single_runs(tmp_path):
    """Params, tags, metric keys and artifacts as a single run's; test_correct.npy the same."""
    cfgs = member_cfgs(
        tmp_path,
        "momentum",
        "trainer.max_epochs=1",
        "trainer.precision=64-true",
        "trainer.limit_train_batches=10",
        "tracking.log_model=true",
    )[:2]
    # No overrides: train() outside a Hydra app has none either (they name the run).
    population = train_population([Member(c) for c, _ in cfgs], workdir=tmp_path / "pop")
    singles = single_runs(tmp_path, cfgs)
    client = MlflowClient(cfgs[0][0].tracking.uri)
    for member, single in zip(population, singles, strict=True):
        ours, theirs = client.get_run(member.run_id), client.get_run(single.run_id)
        assert ours.info.status == "FINISHED" and ours.info.run_name == theirs.info.run_name
        assert ours.data.params == theirs.data.params
        assert set(ours.data.metrics) == set(theirs.data.metrics)
        assert set(theirs.data.tags) == set(ours.data.tags) - {
            "population",
            "population.size",
            "population.member",
        }
        # One checkpoint file for the whole population, in its folder (population.checkpoint).
        assert ours.data.tags["checkpoint.dir"] == str(tmp_path / "pop" / "checkpoints")
        assert {k for k in ours.data.tags if k.startswith("population")} == {
            "population",
            "population.size",
            "population.member",
        }
        for tag in ("pairing.init_sha", "pairing.order_sha", "overrides", "precision"):
            assert ours.data.tags[tag] == theirs.data.tags[tag]
        ours_files = {f.path for f in client.list_artifacts(member.run_id)}
        assert ours_files == {f.path for f in client.list_artifacts(single.run_id)} - {
            "checkpoints"
        }
        correct = [
            np.load(client.download_artifacts(r, "test_correct.npy", str(tmp_path / r)))
            for r in (member.run_id, single.run_id)
        ]
        assert np.array_equal(*correct) and correct[0].shape == (1000,)
    # One writer for the population: its spool names all members' runs, and no other.
    assert population[0].run_id != population[1].run_id


def test_a_diverging_member_fails_alone(tmp_path):
    cfgs = member_cfgs(tmp_path, "sgd", "trainer.max_epochs=1", "trainer.limit_train_batches=30")
    healthy = train_population([Member(c, o) for c, o in cfgs[:2]], workdir=tmp_path / "a")
    wild, overrides = cfgs[2]
    with open_dict(wild):
        wild.optimizer.lr = 1e4
    mixed = train_population(
        [Member(c, o) for c, o in [cfgs[0], (wild, overrides), cfgs[1]]], workdir=tmp_path / "b"
    )
    client = MlflowClient(wild.tracking.uri)
    run = client.get_run(mixed[1].run_id)
    assert run.info.status == "FAILED" and run.data.tags["diverged"] == "true"
    assert "test/acc" not in run.data.metrics
    for alone, among in zip(healthy, [mixed[0], mixed[2]], strict=True):
        assert client.get_run(among.run_id).info.status == "FINISHED"
        assert among.history == alone.history | {"epoch_time_s": among.history["epoch_time_s"]}


def test_what_cannot_be_one_population(tmp_path):
    (a, _), (b, _) = member_cfgs(tmp_path, "adam", "trainer.max_epochs=1")[:2]
    assert batch_problem([a, b]) is None
    c = make_cfg(tmp_path, *QUIET, "optimizer=sgd", "trainer.max_epochs=1")
    assert "optimizer.class" in batch_problem([a, c])
    d = make_cfg(tmp_path, *QUIET, "optimizer=adam", "trainer.max_epochs=1", "data.batch_size=32")
    assert "they differ in data.batch_size (" in batch_problem([a, d])
    e = make_cfg(
        tmp_path, *QUIET, "optimizer=adam", "trainer.max_epochs=1", "+optimizer.maximize=true"
    )
    assert "maximize" in batch_problem([a, e])
    for preset, name in [("schedulefree_adamw", "AdamWScheduleFree"), ("prodigy", "Prodigy")]:
        f = make_cfg(tmp_path, *QUIET, f"optimizer={preset}", "trainer.max_epochs=1")
        problem = batch_problem([f, f])
        assert (
            problem.startswith(f"{name} has no stacked (population) form: ") and "\n" not in problem
        )
    nadam, radam, lion, muon = (
        make_cfg(tmp_path, *QUIET, f"optimizer={p}", "scheduler=cosine")
        for p in ("nadam", "radam", "lion", "muon")
    )
    for cfg in (nadam, radam, lion, muon):
        assert batch_problem([cfg, cfg]) is None


def test_sigterm_ends_every_member_killed(tmp_path, monkeypatch):
    """A signal stops the population at the next group's end; every member's run ends KILLED
    with the points recorded before it."""
    import os
    import signal

    from pipeline.population.module import PopulationModule
    from pipeline.training.signals import Stopped

    groups = []
    original = PopulationModule.training_step

    def step_then_signal(self, group, index):
        original(self, group, index)
        groups.append(index)
        if len(groups) == 2:
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(PopulationModule, "training_step", step_then_signal)
    cfgs = member_cfgs(tmp_path, "adam", "trainer.max_epochs=2", "data.samples_per_group=640")
    with pytest.raises(Stopped) as stopped:
        train_population([Member(c, o) for c, o in cfgs[:2]], workdir=tmp_path / "pop")
    assert stopped.value.signum == signal.SIGTERM and len(groups) == 2
    client = MlflowClient(cfgs[0][0].tracking.uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert len(runs) == 2
    for run in runs:
        assert run.info.status == "KILLED"
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")]
        assert steps == list(range(20))  # 2 groups of 10 steps, every step logged


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("preset", ["momentum", "adam"])
def test_float64_population_equals_single_runs_on_a_gpu(tmp_path, preset):
    """The same code on `trainer=gpu`: float64 members against single runs on the GPU (torch's
    foreach optimizers there round otherwise: equal to 1e-9, not to the bit)."""
    extra = ("trainer=gpu", "trainer.max_epochs=1", "trainer.precision=64-true")
    cfgs = member_cfgs(tmp_path, preset, *extra)
    population = train_population([Member(c, o) for c, o in cfgs], workdir=tmp_path / "pop")
    singles = single_runs(tmp_path, cfgs)
    client = MlflowClient(cfgs[0][0].tracking.uri)
    for member, single in zip(population, singles, strict=True):
        assert client.get_run(member.run_id).data.tags["accelerator"] == "cuda"
        for key in ("train/loss", "val/acc", "test/acc"):
            np.testing.assert_allclose(
                [v for _, v in member.history[key]],
                [v for _, v in single.history[key]],
                rtol=0,
                atol=1e-9,
                err_msg=key,
            )


def test_other_model_shapes_equal_single_runs(tmp_path):
    """Two hidden layers, tanh, the MSE loss: the stacked MLP is the single run's MLP."""
    model = ["model.hidden_sizes=[64,32]", "model.activation=tanh", "model.loss=mse"]
    extra = ("trainer.max_epochs=1", "trainer.limit_train_batches=20", "trainer.precision=64-true")
    cfgs = member_cfgs(tmp_path, "rmsprop", *extra, *model)[:2]
    population = train_population([Member(c, o) for c, o in cfgs], workdir=tmp_path / "pop")
    singles = single_runs(tmp_path, cfgs)
    for member, single in zip(population, singles, strict=True):
        for key in ("train/loss", "val/acc", "val/loss", "test/acc"):
            np.testing.assert_allclose(
                [v for _, v in member.history[key]],
                [v for _, v in single.history[key]],
                rtol=0,
                atol=1e-9,
                err_msg=key,
            )
