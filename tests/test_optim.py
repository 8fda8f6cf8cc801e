"""The from-scratch optimizers take the same path as torch's, option by option, on the real MLP.

Tolerance: the side-by-side runs are in float64, where the two implementations differ only in
the order of floating-point operations (e.g. lerp vs. a·m + (1 − a)·g, √(v/c) vs. √v/√c), about
one unit in the last place (~1e-16) per operation. Measured after 50 steps over all cases: the
largest weight difference is 1.1e-13 (Adadelta with eps=1e-4, whose steps feed back through the
ReLUs), most are below 1e-15, and relative to the weights' scale none exceeds 4e-13. We require
atol=1e-10, rtol=1e-10: three orders of magnitude above that rounding, seven below what a real
difference in an update rule does (momentum 0.89 instead of 0.9 moves weights by ~1e-3 within
five steps: `test_tolerance_sees_a_changed_option`), and the weights move by ≥4e-2.
"""

from __future__ import annotations

import copy
import importlib.util
import inspect
import re

import lion_pytorch
import pytest
import torch
from conftest import ROOT, make_cfg, run_cli, run_in_process, runs_in
from mlflow.tracking import MlflowClient

from pipeline.config.checks import validate
from pipeline.data.batching import IndexBatches
from pipeline.data.datamodule import MNISTDataModule
from pipeline.errors import ConfigError
from pipeline.model.mlp import MLP, classification_loss
from pipeline.optim import adam, adam_variants, adaptive, base, lion, sgd
from pipeline.optim.factory import IMPLS, SCRATCH
from pipeline.training.run import train

pytestmark = pytest.mark.usefixtures("one_torch_thread")

STEPS = 50
TRAIN_VAL_TEST = ("train", "val", "test")
ATOL, RTOL = 1e-10, 1e-10
TORCH_ONLY = ("foreach", "fused", "capturable", "differentiable", "use_triton")

# Every option of every optimizer, each with a non-default value at least once
# (`test_every_option_is_exercised` checks that this list stays complete).
CASES: list[tuple[type[torch.optim.Optimizer], dict]] = [
    (torch.optim.SGD, dict(lr=0.05)),
    (torch.optim.SGD, dict(lr=0.05, momentum=0.9)),
    (torch.optim.SGD, dict(lr=0.05, momentum=0.9, dampening=0.3)),
    (torch.optim.SGD, dict(lr=0.05, momentum=0.9, nesterov=True)),
    (torch.optim.SGD, dict(lr=0.05, weight_decay=0.01)),
    (torch.optim.SGD, dict(lr=0.002, momentum=0.5, weight_decay=0.01, maximize=True)),
    (torch.optim.SGD, dict(lr=0.05, foreach=False, fused=False, differentiable=False)),
    (torch.optim.Adagrad, dict()),
    (torch.optim.Adagrad, dict(lr=0.05, lr_decay=0.05)),
    (torch.optim.Adagrad, dict(weight_decay=0.01)),
    (torch.optim.Adagrad, dict(initial_accumulator_value=0.1)),
    (torch.optim.Adagrad, dict(eps=1e-3)),
    (torch.optim.Adagrad, dict(maximize=True)),
    (torch.optim.RMSprop, dict(lr=1e-3)),
    (torch.optim.RMSprop, dict(lr=1e-3, alpha=0.9)),
    (torch.optim.RMSprop, dict(lr=1e-3, eps=1e-4)),
    (torch.optim.RMSprop, dict(lr=1e-3, weight_decay=0.01)),
    (torch.optim.RMSprop, dict(lr=1e-4, momentum=0.9)),
    (torch.optim.RMSprop, dict(lr=1e-3, centered=True)),
    (torch.optim.RMSprop, dict(lr=1e-4, alpha=0.9, momentum=0.9, centered=True)),
    (torch.optim.RMSprop, dict(lr=1e-3, maximize=True)),
    (torch.optim.Adam, dict()),
    (torch.optim.Adam, dict(lr=3e-3, betas=(0.8, 0.99))),
    (torch.optim.Adam, dict(eps=1e-4)),
    (torch.optim.Adam, dict(weight_decay=0.01)),
    (torch.optim.Adam, dict(weight_decay=0.1, decoupled_weight_decay=True)),
    (torch.optim.Adam, dict(amsgrad=True)),
    (torch.optim.Adam, dict(maximize=True)),
    (torch.optim.AdamW, dict()),
    (torch.optim.AdamW, dict(lr=3e-3, betas=(0.8, 0.99), eps=1e-4, weight_decay=0.1)),
    (torch.optim.AdamW, dict(amsgrad=True)),
    (torch.optim.AdamW, dict(maximize=True)),
    (torch.optim.Adadelta, dict()),
    (torch.optim.Adadelta, dict(lr=0.5, rho=0.95)),
    (torch.optim.Adadelta, dict(eps=1e-4)),
    (torch.optim.Adadelta, dict(weight_decay=0.01)),
    (torch.optim.Adadelta, dict(maximize=True)),
    (torch.optim.NAdam, dict()),
    (torch.optim.NAdam, dict(lr=3e-3, betas=(0.8, 0.99), eps=1e-4, momentum_decay=0.01)),
    (torch.optim.NAdam, dict(weight_decay=0.01)),
    (torch.optim.NAdam, dict(weight_decay=0.1, decoupled_weight_decay=True)),
    (torch.optim.NAdam, dict(maximize=True)),
    (torch.optim.RAdam, dict(lr=3e-3)),  # rho_t > 5 from step 6 on: both branches
    (torch.optim.RAdam, dict(lr=3e-3, betas=(0.8, 0.99), eps=1e-4)),
    (torch.optim.RAdam, dict(lr=3e-3, weight_decay=0.01)),
    (torch.optim.RAdam, dict(lr=3e-3, weight_decay=0.1, decoupled_weight_decay=True)),
    (torch.optim.RAdam, dict(lr=3e-3, maximize=True)),
    (torch.optim.Adamax, dict()),
    (torch.optim.Adamax, dict(lr=3e-3, betas=(0.8, 0.99), eps=1e-4)),
    (torch.optim.Adamax, dict(weight_decay=0.01)),
    (torch.optim.Adamax, dict(maximize=True)),
    (lion_pytorch.Lion, dict(lr=1e-3)),  # each coordinate moves by lr a step
    (lion_pytorch.Lion, dict(lr=1e-3, betas=(0.8, 0.95))),
    (lion_pytorch.Lion, dict(lr=1e-3, weight_decay=0.5)),
    (lion_pytorch.Lion, dict(lr=1e-3, weight_decay=1e-4, decoupled_weight_decay=True)),
]


def case_id(case: tuple[type, dict]) -> str:
    cls, kwargs = case
    return cls.__name__ + "".join(f"-{k}={v}" for k, v in kwargs.items())


@pytest.fixture(scope="module")
def batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The first 50 shuffled training batches of the real (embedded) MNIST digits, in float64."""
    data = MNISTDataModule(source="embedded", batch_size=64)
    data.load()
    x, y = data.tensors["train"]
    return list(IndexBatches(x.double(), y, 64, shuffle=True, seed=0))[:STEPS]


def train_side_by_side(torch_cls, torch_kwargs, scratch_cls, scratch_kwargs, batches):
    """Two copies of one freshly initialised MLP, each trained by one optimizer on the same
    batches; returns (initial, torch-trained, scratch-trained) parameters."""
    torch.manual_seed(0)
    net_torch = MLP(784, [200], 10, "relu").double()
    net_scratch = copy.deepcopy(net_torch)
    initial = [p.detach().clone() for p in net_torch.parameters()]
    pairs = [
        (net_torch, torch_cls(net_torch.parameters(), **torch_kwargs)),
        (net_scratch, scratch_cls(net_scratch.parameters(), **scratch_kwargs)),
    ]
    for x, y in batches:
        for net, optimizer in pairs:

            def closure(net=net, optimizer=optimizer, x=x, y=y):
                optimizer.zero_grad()
                loss = classification_loss(net(x), y, "cross_entropy")
                loss.backward()
                return loss

            optimizer.step(closure)
    return initial, list(net_torch.parameters()), list(net_scratch.parameters())


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_scratch_matches_torch(case, batches):
    torch_cls, kwargs = case
    initial, by_torch, by_scratch = train_side_by_side(
        torch_cls, kwargs, SCRATCH[torch_cls], kwargs, batches
    )
    moved = max((p - p0).abs().max().item() for p, p0 in zip(by_torch, initial, strict=True))
    assert moved > 1e-2, "the optimizer hardly moved the weights: the comparison would be empty"
    for p_torch, p_scratch in zip(by_torch, by_scratch, strict=True):
        assert torch.isfinite(p_torch).all()
        torch.testing.assert_close(p_scratch, p_torch, atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("torch_cls", list(SCRATCH), ids=lambda c: c.__name__)
def test_state_dict_resumes_the_same_path(torch_cls, batches):
    """A checkpoint's optimizer state (Lightning saves `state_dict()`) continues exactly."""
    scratch_cls = SCRATCH[torch_cls]
    kwargs = {  # the options that keep the most state
        torch.optim.SGD: dict(lr=0.05, momentum=0.9),
        torch.optim.RMSprop: dict(lr=1e-4, momentum=0.9, centered=True),
        torch.optim.Adam: dict(amsgrad=True),
        torch.optim.AdamW: dict(amsgrad=True),
    }.get(torch_cls, {})
    torch.manual_seed(0)
    net = MLP(784, [200], 10, "relu").double()
    resumed_net = copy.deepcopy(net)
    unbroken = scratch_cls(net.parameters(), **kwargs)
    first_half = scratch_cls(resumed_net.parameters(), **kwargs)

    def step(net, optimizer, x, y):
        optimizer.zero_grad()
        classification_loss(net(x), y, "cross_entropy").backward()
        optimizer.step()

    for x, y in batches[:5]:
        step(net, unbroken, x, y)
        step(resumed_net, first_half, x, y)
    resumed = scratch_cls(resumed_net.parameters(), **kwargs)
    resumed.load_state_dict(copy.deepcopy(first_half.state_dict()))
    for x, y in batches[5:10]:
        step(net, unbroken, x, y)
        step(resumed_net, resumed, x, y)
    for p, q in zip(net.parameters(), resumed_net.parameters(), strict=True):
        torch.testing.assert_close(q, p, rtol=0, atol=0)


def test_tolerance_sees_a_changed_option(batches):
    """The tolerance is tight enough to tell a slightly different update rule apart."""
    _, by_torch, by_scratch = train_side_by_side(
        torch.optim.SGD, dict(lr=0.05, momentum=0.9), sgd.SGD, dict(lr=0.05, momentum=0.89),
        batches[:5],
    )  # fmt: skip
    with pytest.raises(AssertionError):
        for p_torch, p_scratch in zip(by_torch, by_scratch, strict=True):
            torch.testing.assert_close(p_scratch, p_torch, atol=ATOL, rtol=RTOL)


def test_every_option_is_exercised():
    for torch_cls, scratch_cls in SCRATCH.items():
        signature = inspect.signature(scratch_cls).parameters
        options = set(signature) - {"params", *TORCH_ONLY}
        changed = {
            key
            for cls, kwargs in CASES
            if cls is torch_cls
            for key, value in kwargs.items()
            if value != signature[key].default
        }
        assert options <= changed, f"{torch_cls.__name__}: no case for {options - changed}"


@pytest.mark.parametrize("torch_cls", list(SCRATCH), ids=lambda c: c.__name__)
def test_same_constructor_arguments_as_torch(torch_cls):
    def arguments(cls):
        return [(p.name, p.kind, p.default) for p in inspect.signature(cls).parameters.values()]

    assert arguments(SCRATCH[torch_cls]) == arguments(torch_cls)


@pytest.mark.parametrize("torch_cls", list(SCRATCH), ids=lambda c: c.__name__)
def test_torch_only_switches_are_refused_by_name(torch_cls):
    scratch_cls = SCRATCH[torch_cls]
    switches = [s for s in TORCH_ONLY if s in inspect.signature(scratch_cls).parameters]
    assert switches
    for switch in switches:
        with pytest.raises(base.UnsupportedOption, match=f"optimizer.{switch}=True"):
            scratch_cls([torch.zeros(2, requires_grad=True)], **{switch: True})


def test_complex_parameters_are_refused():
    p = torch.zeros(2, dtype=torch.complex128, requires_grad=True)
    p.grad = torch.ones_like(p)
    with pytest.raises(base.UnsupportedOption, match="optimizer.impl=torch"):
        adam.Adam([p]).step()


def test_invalid_values_are_refused_like_torch():
    for torch_cls, bad in [
        (torch.optim.SGD, dict(lr=-1.0)),
        (torch.optim.SGD, dict(nesterov=True)),
        (torch.optim.Adam, dict(betas=(1.0, 0.999))),
        (torch.optim.Adadelta, dict(rho=1.5)),
    ]:
        for cls in (torch_cls, SCRATCH[torch_cls]):
            with pytest.raises(ValueError):
                cls([torch.zeros(2, requires_grad=True)], **bad)


def test_config_refuses_unsupported_option_before_a_run(cfg_factory):
    cfg = cfg_factory("optimizer=adam", "optimizer.impl=scratch", "+optimizer.fused=true")
    with pytest.raises(ConfigError, match=r"optimizer\.fused=True .*optimizer\.impl=torch"):
        validate(cfg)
    validate(cfg_factory("optimizer=adam", "optimizer.impl=torch", "+optimizer.fused=false"))
    validate(cfg_factory("optimizer=adam", "optimizer.impl=scratch", "+optimizer.foreach=false"))


def test_docs_show_the_code_that_runs():
    """Every code block of docs/optimizers.md is, line for line, in src/pipeline/optim/."""
    docs = (ROOT / "docs" / "optimizers.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", docs, flags=re.DOTALL)
    assert len(blocks) >= 6
    modules = (base, sgd, adaptive, adam, adam_variants, lion)
    code = "\n".join(inspect.getsource(module) for module in modules)
    source = "\n".join(line.strip() for line in code.splitlines())
    for block in blocks:
        assert "\n".join(line.strip() for line in block.strip().splitlines()) in source, block


def metrics_of(store, run_id: str) -> dict[str, list[float]]:
    client = MlflowClient(f"sqlite:///{store}/mlflow.db")
    keys = client.get_run(run_id).data.metrics
    return {k: [m.value for m in client.get_metric_history(run_id, k)] for k in keys}


@pytest.mark.slow
def test_scratch_training_run_gives_torch_metrics(tmp_path):
    """A whole (short) training run, float32 as in production: same metrics as torch.

    float32 rounding (~6e-8) in two orders of operations: the recorded losses of the two
    implementations differ by at most 6e-7 relative over 285 steps (docs/optimizers.md), so
    rtol=1e-4 has a wide margin. Accuracies count correct predictions of 400 / 1,000 samples:
    equal unless a prediction sits on a tie.
    """
    overrides = [
        "optimizer=rmsprop",
        "optimizer.momentum=0.5",
        "optimizer.centered=true",
        "trainer.max_epochs=2",
        "trainer.limit_train_batches=10",
        "tracking.log_model=false",
    ]

    results = {
        impl: train(make_cfg(tmp_path, *overrides, f"optimizer.impl={impl}")) for impl in IMPLS
    }
    by_impl = {impl: metrics_of(tmp_path / "mlruns", r.run_id) for impl, r in results.items()}
    torch_metrics, scratch_metrics = by_impl["torch"], by_impl["scratch"]
    assert set(scratch_metrics) == set(torch_metrics)
    compared = [k for k in torch_metrics if "loss" in k or "acc" in k]
    assert {"train/loss", "val/loss", "val/acc", "test/loss", "test/acc"} <= set(compared)
    for key in compared:
        tol = dict(rel=1e-4, abs=1e-6) if "loss" in key else dict(rel=0, abs=1e-9)
        assert scratch_metrics[key] == pytest.approx(torch_metrics[key], **tol), key
    assert torch_metrics["train/loss"][0] != pytest.approx(torch_metrics["train/loss"][-1])

    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    run = client.get_run(results["scratch"].run_id)
    assert run.data.tags["optimizer.impl"] == "scratch"
    assert run.data.params["optimizer.class"] == "pipeline.optim.adaptive.RMSprop"
    assert "scratch" in run.data.tags["mlflow.runName"]


@pytest.mark.slow
def test_cli_scratch_runs_and_refusal(tmp_path, capsys):
    store = tmp_path / "mlruns"
    common = [
        f"tracking.uri=sqlite:///{store}/mlflow.db",
        f"tracking.artifact_root={store}/artifacts",
        "data.source=embedded",
        "tracking.log_model=false",
    ]
    bad = run_cli("optimizer=adagrad", "optimizer.impl=scratch", "+optimizer.foreach=true", *common)
    assert bad.returncode != 0
    assert "optimizer.foreach=True" in bad.stderr and "optimizer.impl=torch" in bad.stderr
    assert runs_in(store) == []

    # The sweep, cut to two presets and a few batches (train.py in this process).
    status = run_in_process(
        "-m",
        "optimizer=sgd,adagrad",
        "optimizer.impl=scratch",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=3",
        "trainer.limit_val_batches=2",
        "trainer.limit_test_batches=2",
        f"hydra.sweep.dir={tmp_path}/multirun",
        *common,
    )
    assert status == 0, capsys.readouterr().err[-3000:]
    runs = {r.data.tags.get("optimizer"): r for r in runs_in(store) if "optimizer" in r.data.tags}
    assert set(runs) == {"sgd", "adagrad"}
    for name, run in runs.items():
        assert run.info.status == "FINISHED"
        assert run.data.tags["optimizer.impl"] == "scratch"
        expected = {"sgd": "sgd.SGD", "adagrad": "adaptive.Adagrad"}[name]
        assert run.data.params["optimizer.class"] == f"pipeline.optim.{expected}"


@pytest.mark.slow
def test_figure_script_plots_both_implementations(tmp_path):
    """scripts/scratch_vs_torch.py (the docs figure), cut to one preset and a few batches."""
    path = ROOT / "scripts" / "scratch_vs_torch.py"
    spec = importlib.util.spec_from_file_location("scratch_vs_torch", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    store = tmp_path / "mlruns"
    limits = ["trainer.max_epochs=1", "trainer.log_every_n_steps=1"]
    limits += [f"trainer.limit_{split}_batches=2" for split in TRAIN_VAL_TEST]
    results = script.compare(
        ["adam"],
        [f"tracking.uri=sqlite:///{store}/mlflow.db", f"tracking.artifact_root={store}", *limits],
        workdir=tmp_path / "out",
    )
    torch_run, scratch_run = results["adam"]["torch"], results["adam"]["scratch"]
    assert scratch_run["final"]["test/loss"] == pytest.approx(torch_run["final"]["test/loss"])
    assert {r.data.tags["optimizer.impl"] for r in runs_in(store)} == {"torch", "scratch"}
    script.plot(results, tmp_path / "figure.png")
    assert (tmp_path / "figure.png").stat().st_size > 10_000
    assert "| adam |" in script.table(results)
