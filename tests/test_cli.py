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


def test_the_console_shows_warnings_and_our_lines_and_all_when_verbose():
    """conf/hydra/job_logging: third-party INFO goes to the log file only; warnings from
    anyone, and the pipeline's own INFO lines, reach the console; hydra.verbose shows all."""
    import logging

    from pipeline.cli.logs import QuietConsole

    def record(name: str, level: int) -> logging.LogRecord:
        return logging.LogRecord(name, level, __file__, 1, "m", None, None)

    quiet, root = QuietConsole(), logging.getLogger()
    level = root.level
    try:
        root.setLevel(logging.INFO)
        assert not quiet.filter(record("pytorch_lightning.utilities.rank_zero", logging.INFO))
        assert quiet.filter(record("pytorch_lightning", logging.WARNING))
        assert quiet.filter(record("pipeline.sweeps.callback", logging.INFO))
        assert not quiet.filter(record("pipelines", logging.INFO))
        root.setLevel(logging.DEBUG)  # what hydra.verbose=true does
        assert quiet.filter(record("pytorch_lightning.utilities.rank_zero", logging.INFO))
    finally:
        root.setLevel(level)


def test_a_real_warning_still_shows(tmp_path, monkeypatch):
    """Only named, moot warnings are filtered: a warning raised during training comes out
    (pytest records it here, where a terminal would print it)."""
    import warnings

    from conftest import run_in_process, store_overrides

    from pipeline.model.classifier import Classifier

    start = Classifier.on_train_start

    def warned(self):
        warnings.warn("a real problem the user must see", UserWarning, stacklevel=1)
        start(self)

    monkeypatch.setattr(Classifier, "on_train_start", warned)
    tiny = ["data.source=embedded", "trainer.max_epochs=1", "trainer.limit_train_batches=2"]
    with pytest.warns(UserWarning, match="a real problem the user must see"):
        code = run_in_process(*tiny, "tracking.log_model=false", *store_overrides(tmp_path / "s"))
    assert code == 0
