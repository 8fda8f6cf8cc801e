"""scripts/bench.py: one tiny run of all loops writes the table as JSON and Markdown."""

from __future__ import annotations

import json
import logging
import runpy

import pytest
from benchmarks.loops import LOOPS
from benchmarks.main import main as bench
from conftest import ROOT

pytestmark = pytest.mark.slow


def test_bench_writes_json_and_markdown(tmp_path, capsys):
    args = ["--n", "600", "--reps", "1", "--epochs", "1", "--batch-sizes", "64", "--out"]

    loggers = [logging.getLogger(name) for name in ("pytorch_lightning", "lightning_fabric")]
    levels = [logger.level for logger in loggers]
    try:
        returned = bench([*args, str(tmp_path)])
    finally:  # bench quietens Lightning's loggers; the tests after it see them as they were
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)
    printed = capsys.readouterr().out
    results = json.loads((tmp_path / "bench.json").read_text())
    assert results == json.loads(json.dumps(returned))  # what it returns is what it wrote
    summary = results["batch"]["64"]["summary"]
    assert set(summary) == set(LOOPS)
    for name in LOOPS:
        assert summary[name]["samples_per_s"] > 0
    assert summary["a"]["ratio_to_a"] == 1.0
    rep = results["batch"]["64"]["reps"][0]
    # (c) trained on the same samples minus the 10% validation split
    assert rep["c_on"]["samples"] == rep["c_off"]["samples"] == 540
    assert summary["c_on"]["logger_share"] >= 0  # a measurement: tiny epochs can exceed 1
    assert summary["c_on"]["journal_s_per_step"] > 0  # the journal was written, and timed
    assert results["batch"]["64"]["peak"]["VmHWM"] > 0
    table = (tmp_path / "bench.md").read_text()
    assert table in printed  # the printed table is the written one
    assert all(label in table for label in LOOPS.values())


def test_protocol_bench_counts_the_runs_mlflow_holds(tmp_path):
    from benchmarks.protocol import main as protocol_bench

    budget = [
        "data.source=embedded",
        "trainer.max_epochs=1",
        "hydra.sweeper.optimizers=[sgd]",
        "hydra.sweeper.trials=1",
        "hydra.sweeper.replicate_seeds=[1]",
        "hydra.sweeper.searches=1",
    ]
    out = tmp_path / "bench"
    fast = ["--raw-steps", "50", "--out"]
    result = protocol_bench(["--launcher", "basic", "--n-jobs", "1", *fast, str(out), *budget])
    written = json.loads((out / "protocol.json").read_text())
    assert written == json.loads(json.dumps(result))
    b = written["breakdown"]
    assert b["runs"] == 3 and b["stages"] == {"default": 1, "tune": 1, "replicate": 1}
    assert 0 < b["share_training"] < 1 and b["runs_per_min"] > 0
    shares = b["share_training"] + b["share_in_runs"] + b["share_between"]
    assert abs(shares - 1) < 1e-9
    assert (out / "sweep" / "report" / "report.md").is_file()  # the protocol's own report
    assert "| wall | runs |" in (out / "protocol.md").read_text()
    with pytest.raises(SystemExit, match="exists"):  # never into a used store
        protocol_bench(["--out", str(out), *budget])


def test_protocol_bench_counts_a_population_once(tmp_path):
    """Through the experiment's own launcher: each stage's two jobs are one population, whose
    one epoch clock is counted once, and the limit is the member-samples at the raw rate."""
    from benchmarks.protocol import main as protocol_bench

    budget = [
        "data.source=embedded",
        "trainer.max_epochs=1",
        "hydra.sweeper.optimizers=[sgd]",
        "hydra.sweeper.trials=2",
        "hydra.sweeper.replicate_seeds=[1,2]",
        "hydra.sweeper.searches=1",
    ]
    out = tmp_path / "bench"
    b = (result := protocol_bench(["--raw-steps", "50", "--out", str(out), *budget]))["breakdown"]
    assert result["launcher"] == "population" and b["runs"] == 6 and b["populations"] == 3
    assert b["member_samples"] == 6 * 3600  # six runs, one epoch of the embedded digits each
    assert result["limit_s"] == pytest.approx(
        6 * 3600 / (result["raw_samples_per_s"] * result["cpus"])
    )
    assert 0 < b["share_training"] < 1
    assert abs(b["share_training"] + b["share_in_runs"] + b["share_between"] - 1) < 1e-9
    assert "× limit" in (out / "protocol.md").read_text()


def test_startup_benchmark_writes_every_commands_ratio(tmp_path, capsys):
    """`scripts/bench.py --startup`, one round and a 1-epoch run: the ratios, not their values."""
    from benchmarks.startup import FLOOR, HELP_GOAL, REFERENCE, RUN_GOAL, TRAIN

    bench = runpy.run_path(str(ROOT / "scripts" / "bench.py"))["main"]
    train_args = ["trainer.max_epochs=1", "tracking.log_model=false"]
    returned = bench(
        ["--startup", "--reps", "1", "--out", str(tmp_path), "--train-args", *train_args]
    )
    results = json.loads((tmp_path / "startup.json").read_text())
    assert results == json.loads(json.dumps(returned))
    rows = {row["command"]: row for row in results["commands"]}
    helps = [name for name in rows if name.endswith("--help")]
    assert {"pipeline-train --help", "pipeline-compare --help", "scripts/bench.py --help"} <= set(
        helps
    )
    assert rows[REFERENCE]["ratio"] == 1.0 and rows[REFERENCE]["goal"] is None
    assert rows[FLOOR]["ratio_to_floor"] == 1.0 and rows[FLOOR]["goal"] is None
    assert all(rows[name]["goal"] == HELP_GOAL for name in helps)
    assert all(rows[name]["goal_against"] == REFERENCE for name in helps)
    assert rows[TRAIN]["goal"] == RUN_GOAL and rows[TRAIN]["goal_against"] == FLOOR
    assert rows[TRAIN]["argv"][-len(train_args) :] == train_args
    train = rows[TRAIN]  # held to the floor: its verdict follows that ratio
    assert train["meets_goal"] == (train["ratio_to_floor"] <= RUN_GOAL)
    for row in rows.values():
        assert row["ratio"] > 0 and len(row["all_seconds"]) == 1
        assert row["meets_goal"] in (None, True, False)
    table = (tmp_path / "startup.md").read_text()
    assert table in capsys.readouterr().out
    assert all(f"`{name}`" in table for name in rows)


def test_probe_benchmark_times_the_probe_against_training(tmp_path):
    from benchmarks.probe_cost import main as probe_bench

    args = ["--data-source", "embedded", "--data-name", "mnist", "--epochs", "1", "--rounds", "1"]
    result = probe_bench([*args, "--settings", "off", "5:100", "--out", str(tmp_path)])
    assert json.loads((tmp_path / "probe.json").read_text())["results"] == json.loads(
        json.dumps(result)
    )
    assert result["off"]["probes"] == 0 and result["off"]["probe_share"] == 0
    assert result["5:100"]["probes"] == 57 // 5 and result["5:100"]["probe_share"] > 0
    assert "| 5:100 | 11 |" in (tmp_path / "probe.md").read_text()
