"""A shared MLflow tracking server: PostgreSQL for runs and metrics, a folder for artifacts.

`scripts/server.py` (and `make server`) use this to start PostgreSQL (Debian's `postgresql`
package, installed beforehand), create the role and the database if they are missing, and run
`mlflow server` on loopback with artifacts uploaded through it (`--serve-artifacts`).
Training reaches it with `tracking=server` (conf/tracking/server.yaml).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import ServerError

IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def _run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, check=True, **kwargs)
    except FileNotFoundError as error:
        raise ServerError(f"{cmd[0]} not found: {error}") from error
    except subprocess.CalledProcessError as error:
        raise ServerError(f"{' '.join(cmd)} failed: {error.stderr.strip()}") from error


def as_postgres(cmd: list[str]) -> list[str]:
    """`cmd` run as the `postgres` OS user, who may administer the cluster (peer auth)."""
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *cmd]
    if os.environ.get("USER") == "postgres":
        return cmd
    return ["sudo", "-u", "postgres", *cmd]


@dataclass
class Cluster:
    """One PostgreSQL cluster as `pg_lsclusters` lists it (Debian's postgresql-common)."""

    version: str
    name: str
    port: int
    online: bool

    def start(self) -> None:
        cmd = ["pg_ctlcluster", self.version, self.name, "start"]
        _run(cmd if os.geteuid() == 0 else ["sudo", *cmd], timeout=120)
        self.online = True

    def stop(self) -> None:
        cmd = ["pg_ctlcluster", self.version, self.name, "stop"]
        _run(cmd if os.geteuid() == 0 else ["sudo", *cmd], timeout=120)
        self.online = False

    def psql(self, sql: str, database: str = "postgres") -> str:
        """Run SQL as the superuser over the local socket; returns the unaligned output."""
        cmd = ["psql", "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-p", str(self.port)]
        # On stdin, not `-c`: the SQL may hold a password, and command lines are public (`ps`).
        cmd = as_postgres([*cmd, "-d", database, "-f", "-"])
        return _run(cmd, input=sql, timeout=120).stdout.strip()


def clusters() -> list[Cluster]:
    out = _run(["pg_lsclusters", "--no-header"]).stdout
    found = []
    for line in out.splitlines():
        version, name, port, status, *_ = line.split()
        found.append(Cluster(version, name, int(port), status.startswith("online")))
    return found


def ensure_postgres() -> tuple[Cluster, bool]:
    """A running local cluster, started if needed; (cluster, started by us?)."""
    if shutil.which("pg_lsclusters") is None:
        raise ServerError("PostgreSQL is not installed: sudo apt-get install -y postgresql")
    found = clusters()
    if not found:  # the package is there but its default cluster was dropped
        versions = sorted(os.listdir("/usr/lib/postgresql"), key=int)
        _run(["pg_createcluster", versions[-1], "main"], timeout=300)
        found = clusters()
    cluster = next((c for c in found if c.online), found[0])
    if cluster.online:
        return cluster, False
    cluster.start()
    return cluster, True


def _identifier(kind: str, name: str) -> str:
    if not IDENTIFIER.match(name):
        raise ServerError(
            f"{kind} {name!r} is not allowed: use lower-case letters, digits and _ (e.g. mlflow)"
        )
    return name


def ensure_database(cluster: Cluster, database: str, user: str, password: str) -> None:
    """Create the login role and the database it owns, each only if missing."""
    user, database = _identifier("user", user), _identifier("database", database)
    quoted = "'" + password.replace("'", "''") + "'"
    if not cluster.psql(f"SELECT 1 FROM pg_roles WHERE rolname = '{user}'"):
        cluster.psql(f"CREATE ROLE {user} LOGIN PASSWORD {quoted}")
    else:  # before creating anything: the MLflow server would fail with a long traceback
        check_login(cluster, database, user, password)
    if not cluster.psql(f"SELECT 1 FROM pg_database WHERE datname = '{database}'"):
        cluster.psql(f"CREATE DATABASE {database} OWNER {user}")


def check_login(cluster: Cluster, database: str, user: str, password: str) -> None:
    """Log in as `user` with `password` over TCP, as the MLflow server will; ServerError if
    PostgreSQL refuses. A missing `database` is fine: PostgreSQL checks the password first."""
    import psycopg2

    try:
        psycopg2.connect(
            host="127.0.0.1",
            port=cluster.port,
            user=user,
            password=password,
            dbname=database,
            connect_timeout=10,
        ).close()
    except psycopg2.OperationalError as error:
        line = (str(error).strip().splitlines() or [type(error).__name__])[-1]
        reason = line.partition("FATAL:")[2].strip() or line  # past "connection to ... failed:"
        if f'database "{database}" does not exist' in reason:
            return
        if "password authentication failed" in reason:
            raise ServerError(
                f"MLFLOW_DB_PASSWORD does not match the password of the existing PostgreSQL "
                f"role {user}: set MLFLOW_DB_PASSWORD to that role's password, or give the role "
                f"this one: sudo -u postgres psql -c \"ALTER ROLE {user} PASSWORD '...'\""
            ) from None
        raise ServerError(
            f"PostgreSQL refuses a login as {user} on 127.0.0.1:{cluster.port} ({reason})"
        ) from None


def drop_database(cluster: Cluster, database: str) -> None:
    database = _identifier("database", database)
    cluster.psql(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")


def database_uri(cluster: Cluster, database: str, user: str) -> str:
    """SQLAlchemy URI over TCP on loopback (password auth: peer auth is for OS users only).

    No password in it: the URI is on the server's command line, which every local user can read
    (`ps`); the server gets the password in its environment (`server_env`), as libpq reads it.
    The driver is named: SQLAlchemy 2.1 defaults to psycopg 3, the lock has psycopg2-binary.
    """
    return f"postgresql+psycopg2://{user}@127.0.0.1:{cluster.port}/{database}"


def mlflow_server_command(
    backend_uri: str, artifacts: Path, host: str, port: int, workers: int, users: bool = False
) -> list[str]:
    """users=True: MLflow's basic-auth app, users and per-experiment permissions (tracking.auth;
    its settings come through the environment, auth.server_env): what `make server` runs."""
    mlflow = Path(sys.executable).with_name("mlflow")
    return [
        str(mlflow) if mlflow.exists() else "mlflow",
        "server",
        *(["--app-name", "basic-auth"] if users else []),
        "--backend-store-uri",
        backend_uri,
        "--serve-artifacts",  # clients upload artifacts through the server: no shared disk needed
        "--artifacts-destination",
        str(artifacts.resolve()),
        "--host",
        host,
        "--port",
        str(port),
        "--workers",
        str(workers),
    ]


def unreachable(url: str, timeout: float = 5.0) -> str | None:
    """Why `url` is not a live MLflow server (its /health), or None if it is one."""
    try:
        with urllib.request.urlopen(f"{url.rstrip('/')}/health", timeout=timeout) as response:
            return None if response.status == 200 else f"HTTP {response.status}"
    except urllib.error.HTTPError as error:
        return f"HTTP {error.code} on /health"
    except (urllib.error.URLError, OSError) as error:
        return str(getattr(error, "reason", error))


def healthy(url: str, timeout: float = 2.0) -> bool:
    return unreachable(url, timeout) is None


def wait_until_healthy(url: str, process: subprocess.Popen, timeout: float = 180) -> None:
    """Block until `url` answers /health; fail early if the server process died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if healthy(url):
            return
        if process.poll() is not None:
            raise ServerError(f"the MLflow server exited with code {process.returncode}")
        time.sleep(0.5)
    raise ServerError(f"the MLflow server did not answer on {url} within {timeout:.0f} s")


def server_env(db_password: str | None = None) -> dict[str, str]:
    """The server's environment: no job runner (7 extra processes for GenAI jobs we never use),
    and the database password where libpq looks for it (only the same user and root can read
    a process's environment)."""
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    env.pop("MLFLOW_DB_PASSWORD", None)
    if db_password is not None:
        env["PGPASSWORD"] = db_password
    return env


def stop(process: subprocess.Popen, timeout: float = 30) -> None:
    """Stop the server and its workers (their own process group), politely then firmly."""
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout)
    except ProcessLookupError:
        pass
