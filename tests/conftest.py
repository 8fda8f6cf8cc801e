"""Shared test helpers: configs composed like `train.py` does, pointed at a throwaway store."""

from __future__ import annotations

import atexit
import base64
import contextlib
import functools
import json
import logging
import os
import runpy
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, open_dict

import pipeline
from pipeline import errors
from pipeline.config.resolvers import register_resolvers

register_resolvers()  # conf/ uses ${pipeline_root:} and friends

ROOT = pipeline.PROJECT_ROOT
CONF = ROOT / "conf"
sys.path.insert(0, str(ROOT / "scripts"))  # the benchmark's helpers, as `benchmarks`

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


# A run in seconds: one epoch of 3 training minibatches, 2 for validation and test, embedded digits.
ONE_EPOCH = [
    "data.source=embedded",
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=3",
    "trainer.limit_val_batches=2",
    "trainer.limit_test_batches=2",
]


def store_overrides(store: Path) -> list[str]:
    return [
        f"tracking.uri=sqlite:///{store}/mlflow.db",
        f"tracking.artifact_root={store}/artifacts",
    ]


@functools.cache
def _empty_store_db() -> Path:
    """An MLflow sqlite database with its tables and no runs, made once per test session."""
    folder = Path(tempfile.mkdtemp(prefix="empty-store-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    MlflowClient(f"sqlite:///{folder}/mlflow.db").search_experiments()  # creates the tables
    return folder / "mlflow.db"


def make_cfg(tmp_path: Path, *overrides: str) -> DictConfig:
    """Compose conf/train.yaml with a private store, embedded data and a private output folder.

    A new store starts as a copy of an empty one: creating a store's tables takes seconds on a
    busy machine (the CLI tests still create theirs from nothing)."""
    with contextlib.suppress(OSError):  # a store of the test's own exists, or is not ours
        (tmp_path / "mlruns").mkdir(parents=True)
        shutil.copy(_empty_store_db(), tmp_path / "mlruns" / "mlflow.db")
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        cfg = compose(
            "train",
            overrides=[
                *store_overrides(tmp_path / "mlruns"),
                "data.source=embedded",
                *overrides,
            ],
        )
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path / "out")
    return cfg


def run_cli(*args: str, cwd: Path = ROOT, timeout: float = 900) -> subprocess.CompletedProcess:
    """`python train.py ARGS` as a user runs it."""
    return subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def run_in_process(*args: str, script: Path = ROOT / "train.py") -> int:
    """`python train.py ARGS` (or another Hydra `script`) in this process: its command line,
    callbacks and exit status as for a user, without starting Python and importing the training
    code again (seconds). Returns the exit status; for where a separate process is not the point."""
    argv, root = sys.argv, logging.getLogger()
    handlers, level = root.handlers[:], root.level  # Hydra sets up logging for its jobs
    sys.argv = [str(script), *args]
    try:
        runpy.run_path(sys.argv[0], run_name="__main__")
    except SystemExit as stop:
        if stop.code is None or isinstance(stop.code, int):
            return stop.code or 0
        print(stop.code, file=sys.stderr)  # as Python prints it on its way out
        return 1
    finally:
        sys.argv = argv
        GlobalHydra.instance().clear()
        for handler in set(root.handlers) - set(handlers):
            handler.close()
        root.handlers[:] = handlers
        root.setLevel(level)
    return 0


def runs_in(store: Path) -> list:
    """Every run of every experiment in the sqlite store under `store` (none if no store)."""
    if not (store / "mlflow.db").exists():
        return []
    client = MlflowClient(f"sqlite:///{store}/mlflow.db")
    ids = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(ids) if ids else []


def require(
    component: str, present: bool, how: str, problem: str = "is not installed here"
) -> None:
    """Skip (locally) or fail (under CI=true, where .ci/run provisions it) without `component`.

    Tests never install system packages: `how` says how to get it (scripts/provision.sh)."""
    if present:
        return
    message = f"{component} {problem}; {how}"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{message} (CI=true: scripts/provision.sh should have provided it)")
    pytest.skip(message)


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def cfg_factory(tmp_path):
    return lambda *overrides: make_cfg(tmp_path, *overrides)


@pytest.fixture
def one_torch_thread():
    """Small float64 maths runs ~10x slower with torch's second thread on a busy 2-core machine
    (the thread pool spins); tests that do a lot of it use one thread."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _tracking_uri_unset(monkeypatch):
    """MLFLOW_TRACKING_URI decides the default store (conf/tracking/mlflow.yaml), and MLflow's
    set_tracking_uri exports it: no test inherits it, none leaves it behind for the next."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


@dataclass
class Postgres:
    cluster: object  # pipeline.tracking.server.Cluster
    started_here: bool  # it was down: it is stopped again when the module's tests are done


@pytest.fixture(scope="module")
def postgres():
    """A running PostgreSQL cluster: skipped without PostgreSQL (a failure under CI=true, where
    scripts/provision.sh installs it); started if it is down, and then stopped afterwards."""
    from pipeline.tracking import server as ts

    require(
        "PostgreSQL",
        shutil.which("pg_lsclusters") is not None,
        "sudo apt-get install -y postgresql (or: sudo bash scripts/provision.sh)",
    )
    try:
        cluster, started_here = ts.ensure_postgres()
    except errors.ServerError as error:
        require("PostgreSQL", False, str(error), problem="cannot be started here")
    try:
        yield Postgres(cluster, started_here)
    finally:
        if started_here:
            cluster.stop()


@dataclass
class Database:
    uri: str  # an MLflow server's backend URI (no password in it)
    password: str
    name: str  # the database's and its role's


def drop_role(cluster, role: str) -> None:
    """Drop a test's role with every database it owns (its own, and `optuna` that
    scripts/server.py makes for whichever role it serves)."""
    from pipeline.tracking import server as ts

    owned = cluster.psql(
        "SELECT datname FROM pg_database d JOIN pg_roles r ON d.datdba = r.oid "
        f"WHERE r.rolname = '{role}'"
    )
    for database in owned.split():
        ts.drop_database(cluster, database)
    cluster.psql(f"DROP ROLE IF EXISTS {role}")


@pytest.fixture
def postgres_database(postgres):
    """A throwaway PostgreSQL database and role, dropped afterwards."""
    from pipeline.tracking import server as ts

    name, password = f"mlflow_test_{secrets.token_hex(4)}", secrets.token_urlsafe(12)
    ts.ensure_database(postgres.cluster, name, name, password)
    try:
        yield Database(ts.database_uri(postgres.cluster, name, name), password, name)
    finally:
        drop_role(postgres.cluster, name)


@dataclass
class Server:
    """A PostgreSQL-backed MLflow server (`server`, the fixture), with a throwaway database and
    role (user); the tracking-server and SLURM tests use it."""

    url: str
    database: str
    artifacts: Path
    cluster: object  # pipeline.tracking.server.Cluster
    password: str
    user: str
    admin_password: str = ""  # the basic-auth admin's (user admin); the tests act as the admin

    def headers(self) -> dict[str, str]:
        pair = base64.b64encode(f"admin:{self.admin_password}".encode()).decode()
        return {"Content-Type": "application/json", "Authorization": f"Basic {pair}"}

    def api(self, endpoint: str, payload: dict | None = None, **query: str) -> dict:
        """One call of the MLflow REST API (GET with a query, or POST with a JSON body)."""
        url = f"{self.url}/api/2.0/mlflow/{endpoint}"
        if query:
            url += "?" + urllib.parse.urlencode(query)
        data = None if payload is None else json.dumps(payload).encode()
        request = urllib.request.Request(url, data, self.headers())
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.load(response)

    def download(self, run_id: str, path: str) -> bytes:
        query = urllib.parse.urlencode({"run_uuid": run_id, "path": path})
        request = urllib.request.Request(f"{self.url}/get-artifact?{query}", None, self.headers())
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.read()

    def runs(self) -> list[dict]:
        experiment = self.api("experiments/get-by-name", experiment_name="mnist-optimizers")
        ids = [experiment["experiment"]["experiment_id"]]
        return self.api("runs/search", {"experiment_ids": ids, "max_results": 100}).get("runs", [])


@pytest.fixture(scope="module")
def server(postgres, tmp_path_factory) -> Server:
    """scripts/server.py on a free port with a throwaway role and database, stopped and dropped
    afterwards."""
    from pipeline.tracking import server as ts

    cluster = postgres.cluster
    suffix = secrets.token_hex(4)
    database, user = f"mlflow_test_{suffix}", f"mlflow_test_{suffix}"
    folder = tmp_path_factory.mktemp("server")
    port = free_port()
    password, admin = secrets.token_urlsafe(12), secrets.token_urlsafe(16)
    log = (folder / "server.log").open("w")
    script = subprocess.Popen(
        [sys.executable, str(ROOT / "scripts" / "server.py"), "--port", str(port)]
        + ["--database", database, "--user", user, "--workers", "1"]
        + ["--artifacts", str(folder / "artifacts")],
        env={**os.environ, "MLFLOW_DB_PASSWORD": password, "MLFLOW_AUTH_ADMIN_PASSWORD": admin},
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    # The module's runs are the admin's: MLflow's client sends these (and jobs inherit them).
    keys = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")
    saved = {key: os.environ.get(key) for key in keys}
    os.environ.update(MLFLOW_TRACKING_USERNAME="admin", MLFLOW_TRACKING_PASSWORD=admin)
    try:
        ts.wait_until_healthy(url, script, timeout=240)
        yield Server(url, database, folder / "artifacts", cluster, password, user, admin)
    except errors.ServerError as error:
        pytest.fail(f"{error}\n{(folder / 'server.log').read_text()[-3000:]}")
    finally:
        for key, value in saved.items():
            os.environ.pop(key, None) if value is None else os.environ.update({key: value})
        ts.stop(script, timeout=60)  # the script stops its MLflow server on SIGTERM
        log.close()
        drop_role(cluster, user)  # with its database and the `optuna` one
    # Cleaned up for real: nothing answers on the port, the database is gone.
    assert not ts.healthy(url)
    assert not cluster.psql(f"SELECT 1 FROM pg_database WHERE datname = '{database}'")
