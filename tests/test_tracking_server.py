"""tracking=server against a real MLflow server on a real PostgreSQL, read back over its REST API.

The `server` fixture (conftest.py) needs PostgreSQL installed (it skips without it; under
CI=true it fails: .ci/run provisions it), starts it if it is down, then starts
`scripts/server.py` on a free port with a throwaway role and database; afterwards the server is
stopped and the database and role are dropped.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import torch
from conftest import CONF, ROOT, Server, free_port, make_cfg, run_cli, run_in_process
from hydra import compose, initialize_config_dir
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from pipeline.cli.train import main
from pipeline.training.run import train

pytestmark = pytest.mark.slow

QUICK = [
    "data.source=embedded",
    "trainer.max_epochs=2",
    "trainer.limit_train_batches=5",
    "trainer.limit_val_batches=2",
    "trainer.limit_test_batches=2",
]


def tag(run: dict, key: str) -> str | None:
    return {t["key"]: t["value"] for t in run["data"].get("tags", [])}.get(key)


def test_server_uri_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.example:5050")
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        cfg = compose("train", overrides=["tracking=server"])
    assert cfg.tracking.uri == "http://mlflow.example:5050"
    assert cfg.tracking.artifact_root is None  # the server decides: artifacts go through it


def test_training_and_sweep_log_through_the_server(server: Server, tmp_path, capsys):
    # One training run, in this process (make_cfg: the server's URI replaces the sqlite store).
    server_store = ["tracking=server", f"tracking.uri={server.url}", "tracking.artifact_root=null"]
    result = train(make_cfg(tmp_path, *server_store, "optimizer=adam", *QUICK))
    # A 2-job sweep, the server given as tracking.uri (train.py in this process).
    status = run_in_process(
        "-m",
        *server_store,
        "optimizer=sgd,momentum",
        "tracking.log_model=false",
        f"hydra.sweep.dir={tmp_path}/sweep",
        *QUICK,
    )
    assert status == 0, capsys.readouterr().err[-3000:]

    all_runs = server.runs()
    (parent,) = [r for r in all_runs if tag(r, "sweep.role") == "parent"]
    runs = {r["info"]["run_name"].split()[0]: r for r in all_runs if r is not parent}
    assert set(runs) == {"adam", "sgd", "momentum"}, sorted(runs)
    # The sweep: one parent, its two jobs linked to it; the single run stands alone.
    parent_id = parent["info"]["run_id"]
    assert parent["info"]["status"] == "FINISHED"
    assert {n for n, r in runs.items() if tag(r, "mlflow.parentRunId") == parent_id} == {
        "sgd",
        "momentum",
    }
    assert tag(runs["adam"], "mlflow.parentRunId") is None
    report = {
        f["path"] for f in server.api("artifacts/list", run_id=parent_id, path="report")["files"]
    }
    assert {"report/report.md", "report/report.png", "report/report.csv"} <= report, report
    table = server.download(parent_id, "report/report.md").decode()
    assert "sgd" in table and "momentum" in table

    for name in ("adam", "sgd", "momentum"):
        run = runs[name]
        assert run["info"]["status"] == "FINISHED"
        # Artifacts go through the server (mlflow-artifacts:/), not to a path of the client's.
        assert run["info"]["artifact_uri"].startswith("mlflow-artifacts:/")
        metrics = {m["key"]: m["value"] for m in run["data"]["metrics"]}
        assert 0.0 <= metrics["test/acc"] <= 1.0
        history = server.api(
            "metrics/get-history", run_id=run["info"]["run_id"], metric_key="val/acc"
        )
        assert len(history["metrics"]) == 2  # one point per epoch
        listed = server.api("artifacts/list", run_id=run["info"]["run_id"])
        names = {f["path"] for f in listed.get("files", [])}
        assert {"config.yaml", "overrides.yaml", "checkpoints", "curves.png"} <= names, names
        config = server.download(run["info"]["run_id"], "config.yaml").decode()
        assert f"name: {name}" in config

    # The model went through the server too, and the bytes sit in the server's own folder.
    adam_id = runs["adam"]["info"]["run_id"]
    assert adam_id == result.run_id
    adam_metrics = {m["key"]: m["value"] for m in runs["adam"]["data"]["metrics"]}
    assert adam_metrics["test/acc"] == pytest.approx(result.metrics["test/acc"])
    mlflow.set_tracking_uri(server.url)
    model = mlflow.pytorch.load_model(f"runs:/{adam_id}/model")
    assert model(torch.zeros(1, 784)).shape == (1, 10)
    assert list(server.artifacts.rglob("MLmodel"))  # stored in the server's folder
    assert server.download(adam_id, "curves.png").startswith(b"\x89PNG")

    # PostgreSQL holds them: the server is not writing to some other store.
    ids = ",".join(f"'{r['info']['run_id']}'" for r in all_runs)
    count = server.cluster.psql(
        f"SELECT count(*) FROM runs WHERE run_uuid IN ({ids})", server.database
    )
    assert int(count) == len(all_runs) == 4


def test_unreachable_server_stops_before_training(monkeypatch, capsys, tmp_path):
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        cfg = compose("train", overrides=["tracking=server", *QUICK])
    with pytest.raises(SystemExit) as exit_info:
        main(cfg)
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    assert uri in captured.err and "make server" in captured.err, captured.err
    assert "Epoch" not in captured.out + captured.err  # no training was started
    # A sweep stops before its first job, without MLflow's minutes of retries.
    sweep = run_cli("-m", "tracking=server", "optimizer=sgd,adam", *QUICK, cwd=tmp_path)
    assert sweep.returncode == 2
    assert uri in sweep.stderr and "make server" in sweep.stderr, sweep.stderr[-2000:]
    assert "Launching" not in sweep.stdout + sweep.stderr
    assert "Retrying" not in sweep.stderr


def test_the_database_password_is_on_no_command_line(server):
    """Every local user can read every process's command line (`ps`): the password of the
    server's database role must be on none of them (the server gets it in its environment)."""
    exposed = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if server.password.encode() in cmdline.read_bytes():
                exposed.append(cmdline.parent.name)
        except OSError:  # the process ended meanwhile
            continue
    assert exposed == []
    assert server.api("experiments/search", {"max_results": 1}) is not None  # and it works


def add_user(server: Server, name: str, password: str) -> subprocess.CompletedProcess:
    """`pipeline-server add-user NAME`, the password on stdin, the admin's in the environment."""
    return subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "server.py"), "add-user", name]
        + ["--url", server.url],
        input=password + "\n",
        env={**os.environ, "MLFLOW_AUTH_ADMIN_PASSWORD": server.admin_password},
        capture_output=True,
        text=True,
        timeout=120,
    )


def as_user(monkeypatch, name: str, password: str) -> MlflowClient:
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", name)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", password)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    return MlflowClient()


def test_a_user_without_edit_cannot_write_anothers_run(server: Server, monkeypatch, tmp_path):
    alice, bob = f"alice_{secrets.token_hex(3)}", f"bob_{secrets.token_hex(3)}"
    passwords = {alice: secrets.token_urlsafe(12), bob: secrets.token_urlsafe(12)}
    for name in (alice, bob):
        made = add_user(server, name, passwords[name])
        assert made.returncode == 0 and f"user {name} created" in made.stdout, made.stderr
        assert passwords[name] not in made.stdout + made.stderr
    again = add_user(server, bob, passwords[bob])
    assert again.returncode == 2 and "already exists" in again.stderr, again.stderr

    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.url)
    owner = as_user(monkeypatch, alice, passwords[alice])
    experiment = owner.create_experiment(f"{alice}-exp")  # alice MANAGEs it
    run = owner.create_run(experiment).info.run_id
    owner.log_metric(run, "val/acc", 0.5)

    other = as_user(monkeypatch, bob, passwords[bob])
    assert other.get_run(run).data.metrics == {"val/acc": 0.5}  # READ: the default
    with pytest.raises(MlflowException, match="403|PERMISSION_DENIED|Permission denied"):
        other.log_metric(run, "val/acc", 0.9)
    with pytest.raises(MlflowException, match="403|PERMISSION_DENIED|Permission denied"):
        other.set_terminated(run, "FAILED")
    owner = as_user(monkeypatch, alice, passwords[alice])
    points = owner.get_metric_history(run, "val/acc")
    assert [p.value for p in points] == [0.5] and owner.get_run(run).info.status == "RUNNING"

    # Granted EDIT by the admin (`pipeline-server grant`), bob may write it.
    granted = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "server.py"), "grant", bob, f"{alice}-exp"]
        + ["EDIT", "--url", server.url],
        env={**os.environ, "MLFLOW_AUTH_ADMIN_PASSWORD": server.admin_password},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert granted.returncode == 0, granted.stderr
    as_user(monkeypatch, bob, passwords[bob]).log_metric(run, "val/acc", 0.9)
    assert [p.value for p in owner.get_metric_history(run, "val/acc")] == [0.5, 0.9]


def test_wrong_credentials_stop_a_run_before_it_starts(server: Server, monkeypatch, capsys):
    def all_runs() -> list:
        ids = [e["experiment_id"] for e in server.api("experiments/search", {"max_results": 100})[
            "experiments"]]  # fmt: skip
        return server.api("runs/search", {"experiment_ids": ids}).get("runs", [])

    before = all_runs()
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "not-the-password")
    status = run_in_process("tracking=server", f"tracking.uri={server.url}", *QUICK)
    out, err = capsys.readouterr()
    assert status == 2, err[-3000:]
    [line] = [x for x in err.splitlines() if x.startswith("error:")]
    assert "HTTP 401" in line and "MLFLOW_TRACKING_PASSWORD" in line, line
    assert "Traceback" not in err and "not-the-password" not in out + err
    assert "Epoch" not in out + err and all_runs() == before
