"""`python train.py ...` as a user types it: a real run, and bad input that creates nothing."""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor

import pytest
from conftest import run_cli, runs_in, store_overrides

pytestmark = pytest.mark.slow


def test_cli_run_from_another_directory(tmp_path):
    store = tmp_path / "mlruns"
    result = run_cli(
        "optimizer=rmsprop",
        "trainer.max_epochs=2",
        "trainer.limit_train_batches=5",
        "data.source=embedded",
        "tracking.log_model=false",
        *store_overrides(store),
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    match = re.search(r"MLflow run ([0-9a-f]{32}): test/acc (0\.\d+)", result.stdout)
    assert match, result.stdout
    assert "make ui" in result.stdout
    # not a terminal: one concise line per epoch instead of a progress bar
    assert len(re.findall(r"^epoch \d/2 .*val/acc", result.stdout, flags=re.M)) == 2
    [run] = runs_in(store)
    assert run.info.run_id == match.group(1)
    assert run.info.status == "FINISHED"
    assert run.info.run_name.startswith("rmsprop lr=0.001 ")
    assert run.data.params["optimizer.alpha"] == "0.9"
    assert f"{run.data.metrics['test/acc']:.4f}" == match.group(2)


BAD_INPUTS = [
    # (override, text the one error message must contain)
    ("optimizer=nope", "Could not find 'optimizer/nope'"),
    ("foo=1", "Could not override 'foo'"),
    ("optimizer.lr=abc", "optimizer.lr='abc'"),
    ("optimizer.lr=-1", "optimizer.lr=-1"),
    ("data.batch_size=0", "data.batch_size=0"),
]


def test_bad_input_exits_nonzero_and_creates_no_run(tmp_path, monkeypatch):
    # Python lists every module it imports on stderr: bad input is refused before the training
    # code (Lightning, seconds to import) loads.
    monkeypatch.setenv("PYTHONPROFILEIMPORTTIME", "1")

    def attempt(case):
        override, _ = case
        store = tmp_path / re.sub(r"\W", "_", override) / "mlruns"
        return store, run_cli(override, "data.source=embedded", *store_overrides(store))

    with ThreadPoolExecutor(max_workers=len(BAD_INPUTS)) as pool:
        results = list(pool.map(attempt, BAD_INPUTS))
    for (override, expected), (store, result) in zip(BAD_INPUTS, results, strict=True):
        assert result.returncode != 0, override
        assert expected in result.stderr, (override, result.stderr)
        assert "Traceback" not in result.stderr, override
        assert "| pipeline.config" in result.stderr or "Could not" in expected, override
        assert "pytorch_lightning" not in result.stderr, override
        assert runs_in(store) == [], override
