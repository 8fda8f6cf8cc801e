"""scripts/bench.py: one tiny run of all loops writes the table as JSON and Markdown."""

from __future__ import annotations

import json
import logging
import runpy

import pytest
from benchmarks.loops import LOOPS
from conftest import ROOT

pytestmark = pytest.mark.slow


def test_bench_writes_json_and_markdown(tmp_path, capsys):
    args = ["--n", "600", "--reps", "1", "--epochs", "1", "--batch-sizes", "64", "--out"]
    bench = runpy.run_path(str(ROOT / "scripts" / "bench.py"))["main"]  # in-process: faster

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
    assert results["batch"]["64"]["peak"]["VmHWM"] > 0
    table = (tmp_path / "bench.md").read_text()
    assert table in printed  # the printed table is the written one
    assert all(label in table for label in LOOPS.values())
