"""The `scheduler` group: each schedule's lr, step by step, against its torch.optim.lr_scheduler
twin; and the lr a real run records per step (train/lr) against the same twin."""

from __future__ import annotations

import pytest
import torch
from conftest import make_cfg
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf
from torch.optim import lr_scheduler as sched

from pipeline.optim.schedules import scheduler_factory, step_size, warmup_steps
from pipeline.training.run import train

BASE = 0.1
TOTAL = 100


def torch_twin(name: str, cfg: dict, optimizer: torch.optim.Optimizer, total: int):
    """The same schedule, as torch's own classes build it."""
    m = cfg.get("min_lr_ratio", 0.0)
    if name == "cosine":
        return sched.CosineAnnealingLR(optimizer, T_max=total, eta_min=m * BASE)
    if name == "linear":
        return sched.LinearLR(optimizer, start_factor=1.0, end_factor=m, total_iters=total)
    if name == "step":
        size = step_size(cfg["decays"], total)
        return sched.StepLR(optimizer, step_size=size, gamma=cfg["gamma"])
    w = warmup_steps(cfg["warmup_fraction"], total)
    warm = sched.LinearLR(optimizer, start_factor=1 / w, end_factor=1.0, total_iters=w - 1)
    cosine = sched.CosineAnnealingLR(optimizer, T_max=total - w, eta_min=m * BASE)
    return sched.SequentialLR(optimizer, [warm, cosine], milestones=[w])


def lrs(scheduler, steps: int) -> list[float]:
    optimizer, seen = scheduler.optimizer, []
    for _ in range(steps):
        seen.append(optimizer.param_groups[0]["lr"])  # the lr this step takes
        optimizer.step()
        scheduler.step()
    return seen


CASES = {
    "cosine": {"min_lr_ratio": 0.0},
    "cosine to 10%": {"min_lr_ratio": 0.1},
    "warmup_cosine": {"warmup_fraction": 0.1, "min_lr_ratio": 0.0},
    "warmup_cosine to 5%": {"warmup_fraction": 0.05, "min_lr_ratio": 0.05},
    "linear": {"min_lr_ratio": 0.0},
    "linear to 20%": {"min_lr_ratio": 0.2},
    "step": {"decays": 2, "gamma": 0.1},
    "step x3": {"decays": 3, "gamma": 0.5},
}


@pytest.mark.parametrize("case", list(CASES))
def test_each_schedule_is_its_torch_twin_step_by_step(case):
    name = case.split()[0]
    cfg = {"name": name, **CASES[case]}
    ours_opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=BASE)
    twin_opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=BASE)
    ours = lrs(scheduler_factory(OmegaConf.create(cfg))(ours_opt, TOTAL), TOTAL)
    twin = lrs(torch_twin(name, cfg, twin_opt, TOTAL), TOTAL)
    # torch's cosine is recursive (chainable form): it drifts from the closed form by rounding.
    assert ours == pytest.approx(twin, rel=1e-9, abs=1e-15)
    assert len(set(ours)) > 2 and ours[0] != ours[-1]  # the lr does change over the run


def test_constant_builds_no_scheduler_at_all():
    assert scheduler_factory(OmegaConf.create({"name": "constant"})) is None
    assert scheduler_factory(None) is None  # a run recorded before schedules existed


@pytest.mark.slow
def test_a_run_records_the_lr_of_every_step_as_its_torch_twin_gives_it(tmp_path):
    """scheduler=warmup_cosine over 3 epochs of 12 steps: train/lr at steps 0..35 is torch's
    SequentialLR(LinearLR, CosineAnnealingLR) over 36 steps; the default records no train/lr."""
    common = ["trainer.max_epochs=3", "trainer.limit_train_batches=12", "data.batch_size=16",
              "data.samples_per_group=64", "trainer.log_every_n_steps=1", "optimizer.lr=0.1",
              "tracking.log_model=false", "tracking.log_curves=false"]  # fmt: skip
    scheduled = ["scheduler=warmup_cosine", "scheduler.warmup_fraction=0.25"]
    result = train(make_cfg(tmp_path / "a", *common, *scheduled))
    client = MlflowClient(f"sqlite:///{tmp_path}/a/mlruns/mlflow.db")
    points = sorted((m.step, m.value) for m in client.get_metric_history(result.run_id, "train/lr"))
    assert [s for s, _ in points] == list(range(36))
    twin_opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=BASE)
    cfg = {"warmup_fraction": 0.25, "min_lr_ratio": 0.0}
    expected = lrs(torch_twin("warmup_cosine", cfg, twin_opt, 36), 36)
    assert [v for _, v in points] == pytest.approx(expected, rel=1e-6)  # float32 in the store
    run = client.get_run(result.run_id)
    assert run.data.params["scheduler.name"] == "warmup_cosine"

    plain = train(make_cfg(tmp_path / "b", *common))
    client = MlflowClient(f"sqlite:///{tmp_path}/b/mlruns/mlflow.db")
    assert "train/lr" not in client.get_run(plain.run_id).data.metrics
    assert client.get_run(plain.run_id).data.params["scheduler.name"] == "constant"
