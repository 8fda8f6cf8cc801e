"""Optimizer paths on 2-D test functions (scripts/landscape.py, src/pipeline/landscape.py)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from conftest import CONF, ROOT, run_in_process, runs_in, store_overrides
from hydra import compose, initialize_config_dir
from mlflow.tracking import MlflowClient

from pipeline.errors import ConfigError
from pipeline.landscape.app import compose_optimizers, run_landscape, validate_landscape
from pipeline.landscape.descent import descend
from pipeline.landscape.functions import FUNCTIONS
from pipeline.optim.factory import optimizer_factory

SCRIPT = ROOT / "scripts" / "landscape.py"


def compose_landscape(tmp_path: Path, *overrides: str):
    """(top config, one config per optimizer) as scripts/landscape.py composes them."""
    every = [*store_overrides(tmp_path / "mlruns"), *overrides]
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        cfg = compose("landscape", overrides=every)
        return cfg, compose_optimizers(cfg, every)


@pytest.mark.parametrize("name", list(FUNCTIONS))
def test_known_minima_have_value_and_gradient_zero(name):
    fn = FUNCTIONS[name]
    for minimum in fn.minima:
        p = torch.tensor(minimum, dtype=torch.float64, requires_grad=True)
        value = fn(p[0], p[1])
        value.backward()
        assert abs(value.item()) < 1e-12, (minimum, value.item())
        assert p.grad.abs().max().item() < 1e-9, (minimum, p.grad)
        # and it is a minimum, not a saddle: every point of a small ring around it is higher
        ring = (
            torch.tensor(minimum, dtype=torch.float64)
            + 1e-3
            * torch.stack([torch.cos(a := torch.linspace(0, 6.28, 16)), torch.sin(a)], 1).double()
        )
        assert (fn(ring[:, 0], ring[:, 1]) > value.item()).all()
    assert fn(*torch.tensor(fn.start)) > 1  # the standard start is far from a minimum


def test_adam_from_the_standard_start_reaches_a_himmelblau_minimum(tmp_path):
    _, (adam,) = compose_landscape(tmp_path, "optimizers=[adam]")
    fn = FUNCTIONS["himmelblau"]
    path = descend(fn, fn.start, optimizer_factory(adam.optimizer), steps=5000)
    minimum, distance = fn.nearest_minimum(path.final_point)
    assert not path.diverged
    assert distance < 1e-2, (path.final_point, minimum)
    assert path.final_value < 1e-3
    assert path.points.shape == (5001, 2) and tuple(path.points[0]) == fn.start


def test_sgd_with_too_large_lr_is_reported_as_diverged(tmp_path):
    _, (sgd,) = compose_landscape(tmp_path, "optimizers=[sgd]", "optimizer.lr=0.1")
    fn = FUNCTIONS["himmelblau"]
    path = descend(fn, fn.start, optimizer_factory(sgd.optimizer), steps=500)
    assert path.diverged and 0 < path.diverged_at < 500
    assert len(path.points) == path.diverged_at  # the path keeps only the points before it
    assert torch.isfinite(torch.from_numpy(path.values)).all()


def test_scratch_optimizers_take_the_same_path_as_torch(tmp_path):
    presets = "optimizers=[sgd,momentum,adagrad,rmsprop,adam,adadelta]"
    _, torch_cfgs = compose_landscape(tmp_path, presets)
    _, scratch_cfgs = compose_landscape(tmp_path, presets, "optimizer.impl=scratch")
    fn = FUNCTIONS["himmelblau"]
    for torch_cfg, scratch_cfg in zip(torch_cfgs, scratch_cfgs, strict=True):
        factory = optimizer_factory(scratch_cfg.optimizer)
        assert factory.func.__module__.startswith("pipeline.optim.")  # the from-scratch class
        ours = descend(fn, fn.start, factory, steps=200)
        theirs = descend(fn, fn.start, optimizer_factory(torch_cfg.optimizer), steps=200)
        assert ours.points == pytest.approx(theirs.points, rel=1e-9, abs=1e-12), factory.func


def test_run_records_parent_children_metrics_and_figure(tmp_path):
    # From (-4, 0) with lr 0.05 momentum overshoots to infinity while Adam reaches (-3.78, -3.28).
    cfg, children = compose_landscape(
        tmp_path, "optimizers=[adam,momentum]", "optimizer.lr=0.05", "start=[-4,0]", "steps=200"
    )
    result = run_landscape(cfg, children, tmp_path / "out", ["optimizer.lr=0.05"])

    png = result.figure.read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 20_000
    assert "diverged at step" in result.table.splitlines()[-1]  # ranked last
    assert result.table.splitlines()[1].split()[1] == "adam"

    client = MlflowClient(cfg.tracking.uri)
    runs = {r.info.run_id: r for r in runs_in(tmp_path / "mlruns")}
    assert set(runs) == {result.parent_run_id, *result.child_run_ids}
    parent = runs[result.parent_run_id]
    assert client.get_experiment(parent.info.experiment_id).name == "optimizer-landscapes"
    assert parent.info.status == "FINISHED"
    assert parent.data.params["optimizers"] == "adam,momentum"
    assert parent.info.run_name == "himmelblau start=(-4,0) steps=200 lr=0.05"
    artifacts = {a.path for a in client.list_artifacts(result.parent_run_id)}
    assert "landscape_himmelblau.png" in artifacts

    adam_id, momentum_id = result.child_run_ids
    for run_id, path in zip(result.child_run_ids, result.trajectories, strict=True):
        child = runs[run_id]
        assert child.data.tags["mlflow.parentRunId"] == result.parent_run_id
        assert child.info.status == "FINISHED"
        assert child.data.params["optimizer.lr"] == "0.05"  # the override reached every preset
        history = client.get_metric_history(run_id, "f")
        assert [m.step for m in history] == list(range(len(path.values)))
        assert [m.value for m in history] == pytest.approx(list(path.values))
        assert child.data.metrics["final_x"] == pytest.approx(path.final_point[0])
        assert child.data.metrics["final_y"] == pytest.approx(path.final_point[1])

    adam = runs[adam_id].data
    assert adam.params["optimizer.class"] == "torch.optim.adam.Adam"
    assert adam.metrics["distance"] < 1e-3 and adam.metrics["diverged"] == 0
    assert len(client.get_metric_history(adam_id, "f")) == 201
    momentum = runs[momentum_id].data
    assert momentum.metrics["diverged"] == 1 and momentum.tags["result"] == "diverged"
    assert momentum.metrics["diverged_step"] < 200


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        (["function=nope"], "function='nope'"),
        (["steps=0"], "steps=0"),
        (["start=[1]"], "start=[1]"),
        (["start=[1e200,0]"], "f there is inf"),
        (["optimizers=[adam,nope]"], "optimizer=nope"),
        (["optimizers=[adam]", "optimizer.lr=-1"], "optimizer.lr=-1"),
        (["tracking.uri=sqlite:////proc/nope/mlflow.db"], "tracking.uri="),
    ],
)
def test_bad_input_is_named_before_any_run(tmp_path, overrides, named):
    with pytest.raises(ConfigError, match=named.replace("[", r"\[")):
        cfg, children = compose_landscape(tmp_path, *overrides)
        validate_landscape(cfg)
    assert runs_in(tmp_path / "mlruns") == []


def test_optimizer_list_on_the_command_line_becomes_one_figure():
    spec = importlib.util.spec_from_file_location("landscape_script", SCRIPT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.split_optimizer_arg(["x.py", "optimizer=adam,rmsprop,momentum", "steps=2"]) == [
        "x.py",
        "optimizer=adam",
        "optimizers=[adam,rmsprop,momentum]",
        "steps=2",
    ]
    assert script.split_optimizer_arg(["optimizer=adam", "optimizer.lr=0.05"]) == [
        "optimizer=adam",
        "optimizers=[adam]",
        "optimizer.lr=0.05",
    ]


@pytest.mark.slow
def test_cli_comma_list_and_lr_override(tmp_path, capsys):
    """The script's command line, in this process (its __main__ block splits the comma list)."""
    store = tmp_path / "mlruns"
    status = run_in_process(
        *store_overrides(store),
        "function=rosenbrock",
        "steps=300",
        "optimizer=adam,rmsprop,momentum",
        f"hydra.run.dir={tmp_path}/out",
        script=SCRIPT,
    )
    out, err = capsys.readouterr()
    assert status == 0, err
    table = [line for line in out.splitlines() if line[:4].strip().isdigit()]
    assert sorted(line.split()[1] for line in table) == ["adam", "momentum", "rmsprop"]
    # momentum's lr 0.01 is too large for Rosenbrock's curvature: reported, not a crash
    assert "momentum" in table[-1] and "diverged" in table[-1]
    runs = runs_in(store)
    assert len(runs) == 4
    assert sum("mlflow.parentRunId" in r.data.tags for r in runs) == 3

    bad = run_in_process(*store_overrides(tmp_path / "bad"), "optimizer=adam,nope", script=SCRIPT)
    assert bad != 0
    assert "optimizer=nope" in capsys.readouterr().err
    assert runs_in(tmp_path / "bad") == []


def test_each_preset_has_its_colour_and_the_minima_lie_on_top(tmp_path):
    from pipeline.landscape.plot import draw_landscape
    from pipeline.sweeps import palette

    cfg, children = compose_landscape(tmp_path, "optimizers=[rmsprop,adam]", "steps=50")
    fn = FUNCTIONS["himmelblau"]
    paths = [
        descend(fn, (0.0, 0.0), optimizer_factory(c.optimizer), 50, name=c.optimizer.name)
        for c in children
    ]
    fig = draw_landscape(fn, (0.0, 0.0), paths)
    contour = fig.axes[0]
    ends = [line for line in contour.lines if line.get_marker() == "X"]
    assert [end.get_color() for end in ends] == [palette.color("rmsprop"), palette.color("adam")]
    (stars,) = [line for line in contour.lines if line.get_marker() == "*"]
    assert stars.get_zorder() > max(end.get_zorder() for end in ends)


@pytest.mark.slow
def test_a_multirun_writes_where_the_docs_say(tmp_path, capsys):
    status = run_in_process(
        "-m", *store_overrides(tmp_path / "mlruns"), "function=himmelblau,funnel", "steps=5",
        "optimizer=adam", f"paths.root_dir={tmp_path}", script=SCRIPT,
    )  # fmt: skip
    assert status == 0, capsys.readouterr().err[-2000:]
    (folder,) = (tmp_path / "outputs" / "landscape").glob("*-m")
    assert (folder / "0" / "landscape_himmelblau.png").is_file()
    assert (folder / "1" / "landscape_funnel.png").is_file()
    docs = (ROOT / "docs" / "landscape.md").read_text()
    assert "`outputs/landscape/<time>-m/<call number>/landscape_<function>.png`" in docs
