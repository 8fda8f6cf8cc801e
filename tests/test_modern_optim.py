"""Today's presets (nadam, radam, adamax, muon, lion, schedulefree_adamw, prodigy) and the lr
schedules, through the training path: they train, resume mid-epoch to the unbroken run's
numbers, are held to their references, and refuse bad values before any run exists."""

from __future__ import annotations

import csv
import os
import signal
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from conftest import make_cfg, run_in_process, runs_in, store_overrides
from mlflow.tracking import MlflowClient

from pipeline.cli.train import main
from pipeline.model.classifier import Classifier
from pipeline.model.mlp import MLP
from pipeline.optim.muon import MuonAdamW
from pipeline.training.run import train

MODERN = ["nadam", "radam", "adamax", "muon", "lion", "schedulefree_adamw", "prodigy"]
# 2 epochs of 20 minibatches of 16, in groups of 5: a signal at step 27 lands mid-epoch 2.
SMALL = [
    "data.batch_size=16",
    "trainer.limit_train_batches=20",
    "trainer.limit_val_batches=2",
    "trainer.limit_test_batches=2",
    "data.samples_per_group=80",
    "trainer.max_epochs=2",
    "trainer.log_every_n_steps=1",
    "tracking.log_model=false",
    "tracking.log_curves=false",
]
KEYS = ("train/loss", "train/lr", "train/acc", "train/loss_epoch", "val/acc", "val/loss",
        "test/acc")  # fmt: skip


def history(store: Path, run_id: str) -> dict[str, list[tuple[int, float]]]:
    client = MlflowClient(f"sqlite:///{store}/mlflow.db")
    return {
        k: sorted((m.step, m.value) for m in client.get_metric_history(run_id, k)) for k in KEYS
    }


@pytest.mark.slow
@pytest.mark.parametrize(
    "config",
    [[f"optimizer={o}"] for o in MODERN] + [["optimizer=adam", "scheduler=warmup_cosine"]],
    ids=[*MODERN, "adam+warmup_cosine"],
)
def test_a_preset_stopped_mid_epoch_and_resumed_records_the_unbroken_runs_numbers(
    config, tmp_path, monkeypatch
):
    """SIGTERM at step 27 (epoch 2, inside a group), then resume=<id>: every per-step loss and
    lr, and every epoch's figure, must be the unbroken run's (optimizer and schedule state,
    Schedule-Free's modes, Prodigy's d and Muon's two halves all come back from the checkpoint)."""
    main(make_cfg(tmp_path / "unbroken", *SMALL, *config))
    (unbroken,) = runs_in(tmp_path / "unbroken" / "mlruns")
    assert unbroken.info.status == "FINISHED"

    original, taken = Classifier._step, []

    def signalled_step(self, x, y):
        if self.training:
            taken.append(1)
            if len(taken) == 27:
                os.kill(os.getpid(), signal.SIGTERM)
        return original(self, x, y)

    monkeypatch.setattr(Classifier, "_step", signalled_step)
    with pytest.raises(SystemExit) as stopped:
        main(make_cfg(tmp_path / "stopped", *SMALL, *config))
    assert stopped.value.code == 128 + signal.SIGTERM
    (run,) = runs_in(tmp_path / "stopped" / "mlruns")
    assert run.info.status == "KILLED"
    monkeypatch.setattr(Classifier, "_step", original)
    resume = [f"resume={run.info.run_id}"]
    monkeypatch.setattr("pipeline.training.run.hydra_overrides", lambda: resume)  # as train.py
    main(make_cfg(tmp_path / "stopped", *resume))

    resumed = history(tmp_path / "stopped" / "mlruns", run.info.run_id)
    expected = history(tmp_path / "unbroken" / "mlruns", unbroken.info.run_id)
    assert resumed == expected
    assert [s for s, _ in expected["train/loss"]] == list(range(40))
    assert bool(expected["train/lr"]) == ("scheduler=warmup_cosine" in config)
    losses = [v for _, v in expected["train/loss"]]
    assert sum(losses[-5:]) < sum(losses[:5])  # it trains


def _mlp_and_batches(seed: int = 0, steps: int = 5):
    torch.manual_seed(seed)
    net = MLP(784, [200], 10, "relu").double()
    data = [(torch.randn(32, 784, dtype=torch.float64), torch.randint(0, 10, (32,)))
            for _ in range(steps)]  # fmt: skip
    return net, data


def test_muon_is_torch_muon_on_the_hidden_weight_and_adamw_on_the_rest():
    """MuonAdamW's step is exactly torch.optim.Muon's on the hidden weight matrix plus
    torch.optim.AdamW's on the biases and the output layer, as two separate optimizers do."""
    ours, data = _mlp_and_batches()
    ref = MLP(784, [200], 10, "relu").double()
    ref.load_state_dict(ours.state_dict())
    start = ours[0].weight.detach().clone()
    model = Classifier()
    model.net = ours
    opt = MuonAdamW(model.hidden_split(), lr=0.01, weight_decay=0.05)
    hidden = [ref[0].weight]
    rest = [ref[0].bias, ref[2].weight, ref[2].bias]
    muon = torch.optim.Muon(hidden, lr=0.01, weight_decay=0.05, adjust_lr_fn="match_rms_adamw")
    adamw = torch.optim.AdamW(rest, lr=0.01, weight_decay=0.05)
    for x, y in data:
        for net, steppers in ((ours, [opt]), (ref, [muon, adamw])):
            for s in steppers:
                s.zero_grad()
            torch.nn.functional.cross_entropy(net(x), y).backward()
            for s in steppers:
                s.step()
    for a, b in zip(ours.parameters(), ref.parameters(), strict=True):
        assert torch.equal(a, b)
    assert (ours[0].weight - start).abs().max() > 1e-3
    # Each half keeps its own kind of state; a state_dict round trip gives both back.
    assert set(opt.state[ours[0].weight]) == {"momentum_buffer"}
    assert {"exp_avg", "exp_avg_sq"} <= set(opt.state[ours[2].weight])
    again = MuonAdamW(model.hidden_split(), lr=0.01, weight_decay=0.05)
    again.load_state_dict(opt.state_dict())
    assert again.muon.state is again.state and again.adamw.state is again.state
    assert torch.equal(again.state[ours[0].weight]["momentum_buffer"],
                       opt.state[ours[0].weight]["momentum_buffer"])  # fmt: skip


def test_muon_without_the_models_split_is_refused():
    with pytest.raises(ValueError, match="parameter split"):
        MuonAdamW(MLP(784, [200], 10, "relu").parameters())


class ModeProbe(pl.Callback):
    """Schedule-Free's mode (train_mode of its groups) wherever weights are read or saved."""

    def __init__(self) -> None:
        self.seen: dict[str, list[bool]] = {"validation": [], "test": [], "checkpoint": []}

    @staticmethod
    def _mode(trainer) -> bool:
        return trainer.optimizers[0].param_groups[0]["train_mode"]

    def on_validation_start(self, trainer, pl_module) -> None:
        self.seen["validation"].append(self._mode(trainer))

    def on_test_start(self, trainer, pl_module) -> None:
        self.seen["test"].append(self._mode(trainer))

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        self.seen["checkpoint"].append(self._mode(trainer))


@pytest.mark.slow
def test_schedulefree_is_validated_tested_and_saved_at_its_averaged_weights(tmp_path):
    """Schedule-Free steps at y and is evaluated at x: validation, test and every checkpoint
    must see eval mode (x). The last epoch's val/loss is recomputed from last.ckpt's weights:
    equal at x, and not what y (train mode) would give."""
    cfg = make_cfg(tmp_path, *SMALL, "optimizer=schedulefree_adamw", "optimizer.lr=0.01")
    probe = ModeProbe()
    result = train(cfg, callbacks=[probe])
    assert probe.seen["validation"] and probe.seen["test"] and probe.seen["checkpoint"]
    assert not any(v for seen in probe.seen.values() for v in seen), probe.seen

    ckpt = torch.load(tmp_path / "out" / "checkpoints" / "last.ckpt", weights_only=True)
    model = Classifier(optimizer=None)
    model.load_state_dict(ckpt["state_dict"])
    from hydra.utils import instantiate

    datamodule = instantiate(cfg.data, seed=cfg.seed, limit_batches={"val": 2})
    datamodule.load()
    x, y = datamodule.tensors["val"]
    x, y = x[: 2 * 16], y[: 2 * 16]

    def val_loss(net) -> float:
        with torch.no_grad():
            return torch.nn.functional.cross_entropy(net(x), y).item()

    assert val_loss(model) == pytest.approx(result.metrics["val/loss"], rel=1e-6)
    # y = x + (1 - beta1)(z - x): the point the optimizer steps from.
    state = ckpt["optimizer_states"][0]
    beta1 = state["param_groups"][0]["betas"][0]
    with torch.no_grad():
        for i, p in enumerate(model.parameters()):
            p.lerp_(state["state"][i]["z"], 1 - beta1)
    assert val_loss(model) != pytest.approx(result.metrics["val/loss"], rel=1e-4)


@pytest.mark.slow
def test_a_schedule_cannot_be_added_to_a_run_mid_way(tmp_path, monkeypatch, capsys):
    main(make_cfg(tmp_path, *SMALL, "trainer.max_epochs=1"))
    (run,) = runs_in(tmp_path / "mlruns")
    resume = [f"resume={run.info.run_id}", "scheduler=cosine", "trainer.max_epochs=2"]
    monkeypatch.setattr("pipeline.training.run.hydra_overrides", lambda: resume)  # as train.py
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
        main(make_cfg(tmp_path, *resume))
    assert stop.value.code == 2
    err = capsys.readouterr().err  # MLflow's download progress may precede it
    (message,) = [line for line in err.splitlines() if line.startswith("error:")]
    assert message.startswith("error: resume=") and "Traceback" not in err
    assert "no learning-rate schedule, so scheduler=cosine cannot take over" in message
    (after,) = runs_in(tmp_path / "mlruns")
    assert after.info.status == "FINISHED" and after.data.metrics == run.data.metrics


BAD = {
    "muon ns_steps": (["optimizer=muon", "optimizer.ns_steps=2.5"], ["optimizer.ns_steps=2.5",
                                                                     "integer"]),
    "muon adjust_lr_fn": (["optimizer=muon", "optimizer.adjust_lr_fn=fast"], ["match_rms_adamw"]),
    "muon adamw_betas": (["optimizer=muon", "optimizer.adamw_betas=[0.9,1.5]"], ["[0, 1)"]),
    "lion betas": (["optimizer=lion", "optimizer.betas=[0.9]"], ["optimizer.betas", "two numbers"]),
    "prodigy d_coef": (["optimizer=prodigy", "optimizer.d_coef=0"], ["optimizer.d_coef=0"]),
    "nadam momentum_decay": (["optimizer=nadam", "optimizer.momentum_decay=-1"], ["[0, inf)"]),
    "schedulefree warmup": (["optimizer=schedulefree_adamw", "optimizer.warmup_steps=-5"],
                            ["optimizer.warmup_steps=-5"]),
    "schedulefree foreach": (["optimizer=schedulefree_adamw", "+optimizer.foreach=1"],
                             ["true or false"]),
    "radam unknown key": (["optimizer=radam", "+optimizer.momentum=0.9"], ["not an argument",
                                                                            "RAdam"]),
    "custom without class": (["optimizer=custom"], ["optimizer._target_ is not set"]),
    "custom no such class": (["optimizer=custom", "optimizer._target_=nope.Nope"],
                             ["nope.Nope", "no such module", "PYTHONPATH"]),
    "custom not an optimizer": (["optimizer=custom", "optimizer._target_=os.path.join"],
                                ["not a torch.optim.Optimizer subclass"]),
    "scheduler name": (["scheduler=cosine", "scheduler.name=exp"], ["scheduler.name='exp'",
                                                                    "warmup_cosine"]),
    "scheduler gamma": (["scheduler=step", "scheduler.gamma=0"], ["scheduler.gamma=0", "(0, 1]"]),
    "scheduler warmup": (["scheduler=warmup_cosine", "scheduler.warmup_fraction=1.5"],
                         ["scheduler.warmup_fraction=1.5"]),
    "scheduler decays": (["scheduler=step", "scheduler.decays=0"], ["integer > 0"]),
    "scheduler other's key": (["scheduler=cosine", "+scheduler.gamma=0.5"],
                              ["scheduler.gamma is not a setting of scheduler=cosine"]),
}  # fmt: skip


@pytest.mark.parametrize("case", list(BAD))
def test_a_bad_optimizer_or_schedule_value_is_one_line_and_no_run(case, tmp_path, capsys):
    overrides, words = BAD[case]
    with pytest.raises(SystemExit) as exit_info:
        main(make_cfg(tmp_path, *overrides))
    assert exit_info.value.code == 2
    message = capsys.readouterr().err.strip()
    assert message.startswith("error: ") and "\n" not in message, message
    for word in words:
        assert word in message, (word, message)
    assert runs_in(tmp_path / "mlruns") == []


@pytest.mark.slow
def test_the_modern_comparison_runs_every_optimizer_through_each_stage_into_its_report(
    tmp_path,
):
    """experiment=fair_comparison_modern at the smallest budget (1 trial, 1 replicate seed,
    1 epoch of 2 steps): the seeds' six and today's six, each in every stage and the report."""
    store = tmp_path / "mlruns"
    status = run_in_process(
        "-m", "experiment=fair_comparison_modern", "hydra/launcher=basic",
        "hydra.sweeper.trials=1", "hydra.sweeper.replicate_seeds=[1]", "hydra.sweeper.poll_s=0.2",
        "hydra.sweeper.searches=1",
        "data.source=embedded", "trainer.max_epochs=1", "trainer.limit_train_batches=2",
        "trainer.limit_val_batches=1", "trainer.limit_test_batches=1",
        "tracking.log_model=false", "tracking.log_curves=false",
        *store_overrides(store), f"hydra.sweep.dir={tmp_path}/sweep",
    )  # fmt: skip
    assert status == 0
    children = [r for r in runs_in(store) if r.data.tags.get("sweep.role") != "parent"]
    expected = {"sgd", "momentum", "adagrad", "rmsprop", "adam", "adadelta",
                "adamw", "nadam", "lion", "muon", "schedulefree_adamw", "prodigy"}  # fmt: skip
    stages = {(r.data.tags["protocol.optimizer"], r.data.tags["protocol.stage"]) for r in children}
    assert stages == {(o, s) for o in expected for s in ("default", "tune", "replicate")}
    assert all(r.info.status == "FINISHED" for r in children)
    (report,) = (tmp_path / "sweep").glob("report*/report.csv")
    with open(report) as f:
        assert {row["optimizer"] for row in csv.DictReader(f)} == expected
