"""The step probe (training.probe) and time-to-target at step resolution.

A single run and a population member record probe/val_acc at the same steps with the same values
(float64, 1e-9), inside and across groups of minibatches; a plain run records no probe; the
protocol's analysis tells apart runs that reach the target at different steps of one epoch.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import make_cfg
from mlflow.tracking import MlflowClient
from omegaconf import open_dict

from pipeline.errors import ConfigError
from pipeline.population.run import Member, train_population
from pipeline.sweeps.protocol.analysis import to_target
from pipeline.sweeps.protocol.runs import Run
from pipeline.sweeps.protocol.tables import reach
from pipeline.training.probe import ACC_KEY, TIME_KEY
from pipeline.training.run import build, train

QUIET = ["tracking.log_model=false", "tracking.log_curves=false", "trainer.max_epochs=1"]
EPOCH = 57  # optimizer steps in an epoch of the embedded digits at batch 64


def cfgs_for(tmp_path, *extra: str, members: int = 2):
    cfgs = []
    for k in range(members):
        cfg = make_cfg(tmp_path, *QUIET, *extra, f"seed={k + 1}", f"optimizer.lr={0.02 * (k + 1)}")
        with open_dict(cfg):
            cfg.paths.output_dir = str(tmp_path / f"member{k}")
        cfgs.append(cfg)
    return cfgs


def single(tmp_path, cfg, name: str):
    cfg = cfg.copy()
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path / name)
    return train(cfg)


@pytest.mark.slow
# 128 steps a group (the default): every probe inside the group; 5 steps a group: probes fall
# on group ends and inside groups alike.
@pytest.mark.parametrize("per_group", [8192, 320])
def test_population_member_probes_as_the_single_run(tmp_path, per_group):
    probe = ["probe.every_n_steps=7", "probe.examples=300", f"data.samples_per_group={per_group}"]
    extra = ["optimizer=momentum", "trainer.precision=64-true", *probe]
    cfgs = cfgs_for(tmp_path, *extra)
    population = train_population([Member(c) for c in cfgs], workdir=tmp_path / "pop")
    steps = [s - 1 for s in range(7, EPOCH + 1, 7)]  # after steps 7, 14, ..., 56 (0-based - 1)
    for k, cfg in enumerate(cfgs):
        alone = single(tmp_path, cfg, f"single{k}")
        ours, theirs = population[k].history[ACC_KEY], alone.history[ACC_KEY]
        assert [s for s, _ in theirs] == steps and [s for s, _ in ours] == steps
        np.testing.assert_allclose([v for _, v in ours], [v for _, v in theirs], rtol=0, atol=1e-9)
        assert len({v for _, v in theirs}) > 2  # it moves as the model trains
        for history in (population[k].history, alone.history):
            seconds = [v for _, v in history[TIME_KEY]]
            assert [s for s, _ in history[TIME_KEY]] == steps
            assert 0 < seconds[0] and np.all(np.diff(seconds) > 0)
            # Training seconds, the probe's own excluded: within the epoch's training time.
            assert seconds[-1] <= history["epoch_time_s"][-1][1]
        # Recorded in the MLflow run, at the same steps.
        stored = MlflowClient(cfg.tracking.uri).get_metric_history(population[k].run_id, ACC_KEY)
        assert sorted(m.step for m in stored) == steps


@pytest.mark.slow
def test_a_plain_run_records_no_probe(tmp_path):
    result = train(make_cfg(tmp_path, *QUIET, "trainer.limit_train_batches=10"))
    assert not {k for k in result.history if k.startswith("probe/")}
    assert "val/acc" in result.history


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["momentum", "schedulefree_adamw"])
def test_the_probe_changes_no_other_number(tmp_path, preset):
    """Probed every 3 steps or not, a run records the same losses and accuracies, bit for bit;
    schedule-free too, though the probe evaluates it at its eval point mid-group."""
    keys = ("train/loss", "train/loss_epoch", "val/acc", "val/loss", "test/acc")
    histories = []
    for every in (0, 3):
        cfg = make_cfg(tmp_path, *QUIET, f"optimizer={preset}", f"probe.every_n_steps={every}")
        with open_dict(cfg):
            cfg.paths.output_dir = str(tmp_path / f"every{every}")
        histories.append(train(cfg).history)
    assert [histories[0][k] for k in keys] == [histories[1][k] for k in keys]
    assert len(histories[1][ACC_KEY]) == EPOCH // 3 and ACC_KEY not in histories[0]
    # After the epoch's last step, on every validation example (400 < 2,000): the probe sees what
    # validation sees (schedule-free: its eval point), up to val/acc's float32.
    (last_step, last), (val_step, val) = histories[1][ACC_KEY][-1], histories[1]["val/acc"][0]
    assert last_step == val_step == EPOCH - 1 and last == pytest.approx(val, abs=1e-6)


@pytest.mark.slow
def test_runs_reaching_the_target_within_one_epoch_differ_in_steps(tmp_path):
    """Two real runs (lr 0.003 and 0.03), probed every 5 steps: their steps to a target both
    reach differ and fall inside the epoch; by the epoch's val/acc alone both read one epoch."""
    runs = []
    for k, lr in enumerate((0.003, 0.03)):
        cfg = make_cfg(
            tmp_path, *QUIET, "probe.every_n_steps=5", "optimizer=momentum", f"optimizer.lr={lr}"
        )
        with open_dict(cfg):
            cfg.paths.output_dir = str(tmp_path / f"lr{k}")
        result = train(cfg)
        runs.append(Run(result.run_id, "r", "replicate", "momentum", None, 1, "FINISHED", {},
                        math.nan, result.history))  # fmt: skip
    # A target both reach within the epoch: the lower of the two runs' best probe.
    target = min(max(v for _, v in r.curves[ACC_KEY]) for r in runs)
    (slow, slow_s), (fast, fast_s) = (to_target(r, target) for r in runs)
    assert fast < slow < EPOCH and fast % 5 == 0 and slow % 5 == 0
    assert 0 < fast_s < math.inf and 0 < slow_s < math.inf
    epoch_only = [{k: v for k, v in r.curves.items() if not k.startswith("probe/")} for r in runs]
    by_epoch = [to_target(Run(*[None] * 9, curves), 0.0)[0] for curves in epoch_only]
    assert by_epoch == [EPOCH, EPOCH]


def synthetic(acc: list[tuple[int, float]]) -> Run:
    curves = {
        ACC_KEY: acc,
        TIME_KEY: [(s, 0.01 * (s + 1)) for s, _ in acc],
        "val/acc": [(843, 0.9)],
        "epoch_time_s": [(843, 9.0)],
    }
    return Run("r", "r", "replicate", "sgd", None, 1, "FINISHED", {}, 0.9, curves)


def test_to_target_is_the_first_probe_at_or_above():
    early = synthetic([(99, 0.5), (199, 0.86), (299, 0.84), (399, 0.9)])
    late = synthetic([(99, 0.5), (199, 0.7), (299, 0.85), (399, 0.9)])
    never = synthetic([(99, 0.5), (199, 0.7), (299, 0.8), (399, 0.84)])
    assert to_target(early, 0.85) == (200.0, 2.0)  # the dip after it does not matter
    assert to_target(late, 0.85) == (300.0, 3.0)
    assert to_target(never, 0.85) == (math.inf, math.inf)  # though val/acc reached 0.9
    assert reach([to_target(r, 0.85) for r in (early, late, never)], 0, 0) == "300 (2/3)"
    assert reach([to_target(r, 0.85) for r in (early, never, never)], 0, 0) == "not reached (1/3)"


@pytest.mark.parametrize("override", ["probe.every_n_steps=-1", "probe.examples=0"])
def test_bad_probe_settings_fail_before_a_run(tmp_path, override):
    with pytest.raises(ConfigError, match=f"^{override} is not allowed"):
        build(make_cfg(tmp_path, *QUIET, override))


def test_a_population_members_seconds_are_its_share_of_the_clock(tmp_path):
    """A member's epoch_time_s and probe/train_time_s are its population's (all K members'):
    the report reads each member's share, so populations of other sizes compare."""
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    from pipeline.sweeps.protocol.analysis import to_target
    from pipeline.sweeps.protocol.runs import _read

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    run_id = client.create_run(client.create_experiment("e")).info.run_id
    for key, value in {"protocol.stage": "replicate", "population.size": "4"}.items():
        client.set_tag(run_id, key, value)
    points = [("probe/val_acc", 0.8, 4), ("probe/val_acc", 0.9, 9), ("val/acc", 0.9, 19),
              ("probe/train_time_s", 4.0, 4), ("probe/train_time_s", 8.0, 9),
              ("epoch_time_s", 16.0, 19)]  # fmt: skip
    client.log_batch(run_id, metrics=[Metric(k, v, 0, s) for k, v, s in points])
    run = _read(client, client.get_run(run_id), "val/acc")
    assert to_target(run, 0.85) == (10.0, 2.0)  # 8 s of a population of 4
    assert run.curves["epoch_time_s"] == [(19, 4.0)]
