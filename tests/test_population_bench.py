"""scripts/bench.py population: a tiny run writes its table as JSON and Markdown."""

from __future__ import annotations

import json

import pytest
from benchmarks.population import main as bench

pytestmark = pytest.mark.slow


def test_population_bench_writes_json_and_markdown(tmp_path, capsys):
    args = ["--sizes", "1", "3", "--steps", "10", "--rounds", "1", "--n", "2000"]
    returned = bench([*args, "--pipeline", "--pipeline-steps", "5", "--out", str(tmp_path)])
    written = json.loads((tmp_path / "population.json").read_text())
    assert written == json.loads(json.dumps(returned))
    assert written["raw_samples_per_s"] > 0
    assert set(written["population"]) == {"1", "3"}
    assert all(row["member_samples_per_s"] > 0 for row in written["population"].values())
    assert set(written["pipeline"]) == {"single", "1", "3"}
    table = (tmp_path / "population.md").read_text()
    assert table in capsys.readouterr().out
    assert "| 3 |" in table and "population of 3" in table
