"""A journal is untrusted input to `scripts/runs.py sync`: its records go only to the folder's
own run and store, its files must lie in the folder, and it cannot end a FINISHED run.
And a record sent before (its sent-mark lost to a kill) is not sent twice."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import runs  # scripts/runs.py (conftest puts scripts/ on the path)
from conftest import _empty_store_db
from mlflow.tracking import MlflowClient

from pipeline.tracking.records import SPOOL_NAME
from pipeline.tracking.tags import CHECKPOINT_DIR_TAG


@pytest.fixture
def store(tmp_path: Path) -> tuple[str, MlflowClient, str, str, Path]:
    """(uri, client, the folder's own run, another run, the folder); both runs FINISHED."""
    (tmp_path / "mlruns").mkdir()
    (tmp_path / "mlruns" / "mlflow.db").write_bytes(_empty_store_db().read_bytes())
    uri = f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    client = MlflowClient(uri)
    experiment = client.create_experiment("e", (tmp_path / "mlruns" / "artifacts").as_uri())
    out = tmp_path / "out"
    (out / "checkpoints").mkdir(parents=True)
    own = client.create_run(experiment, tags={CHECKPOINT_DIR_TAG: str(out / "checkpoints")})
    other = client.create_run(experiment, tags={CHECKPOINT_DIR_TAG: str(tmp_path / "else")})
    for run in (own, other):
        client.set_terminated(run.info.run_id, "FINISHED")
    return uri, client, own.info.run_id, other.info.run_id, out


def write(folder: Path, *records: dict) -> None:
    lines = [json.dumps({**record, "seq": n}) for n, record in enumerate(records, 1)]
    (folder / SPOOL_NAME).write_text("\n".join(lines) + "\n")


def metrics(run_id: str, uri: str, step: int) -> dict:
    return {"op": "metrics", "run_id": run_id, "uri": uri, "points": [["m", 1.0, 7, step]]}


def test_a_crafted_journal_sends_nothing_it_may_not(store, tmp_path, capsys):
    uri, client, own, other, out = store
    secret = tmp_path / "secret.txt"
    secret.write_text("password")
    (out / "link.txt").symlink_to(secret)  # inside by name, outside once resolved
    evil = f"sqlite:///{tmp_path}/evil.db"
    write(
        out,
        metrics(own, uri, 1),  # the folder's own run: sent
        {"op": "artifact", "run_id": own, "uri": uri, "path": str(secret), "dir": None},
        {"op": "artifact", "run_id": own, "uri": uri, "path": str(out / "link.txt")},
        {"op": "text", "run_id": own, "uri": uri, "text": "x", "file": "../../escape.txt"},
        metrics(other, uri, 2),  # another run of the same store
        metrics(own, evil, 3),  # the same run id, another store
        {"op": "status", "run_id": own, "uri": uri, "status": "FAILED", "end_time": 1},
    )
    assert runs.main(["sync", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("error: not sent:") == 6, err
    assert str(secret) in err and "outside" in err and "FINISHED" in err
    assert [m.step for m in client.get_metric_history(own, "m")] == [1]
    assert client.get_metric_history(other, "m") == []
    assert client.list_artifacts(own) == []
    assert client.get_run(own).info.status == "FINISHED"
    assert not (tmp_path / "evil.db").exists()


def test_a_journal_of_another_folders_run_is_refused(store, capsys):
    uri, client, _, other, out = store
    write(out, metrics(other, uri, 1))
    assert runs.main(["sync", str(out)]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("error: ") and other in line and "own folder" in line, line
    assert client.get_metric_history(other, "m") == []


def test_a_record_whose_sent_mark_was_lost_is_not_sent_twice(store, capsys):
    uri, client, own, _, out = store
    write(out, metrics(own, uri, 1), metrics(own, uri, 2))
    client.log_metric(own, "m", 1.0, timestamp=7, step=1)  # sent, then killed before the mark
    assert runs.main(["sync", str(out)]) == 0
    assert [m.step for m in client.get_metric_history(own, "m")] == [1, 2]
    assert runs.main(["sync", str(out)]) == 0
    assert "nothing to send" in capsys.readouterr().out
    assert [m.step for m in client.get_metric_history(own, "m")] == [1, 2]
