"""`pipeline-server` (= `python scripts/server.py`, `make server`): a shared MLflow tracking server
on this machine: PostgreSQL + artifacts folder, loopback.

    pipeline-server                          # http://127.0.0.1:5050, database `mlflow`
    make server                              # the same (SERVER_PORT=5051 make server)
    pipeline-server add-user NAME [--url U]  # a user; the password is read from stdin
    pipeline-server grant NAME EXPERIMENT EDIT [--url U]

Users: MLflow's basic-auth app (pipeline.tracking.auth). The admin's password comes from
MLFLOW_AUTH_ADMIN_PASSWORD (user MLFLOW_AUTH_ADMIN_USERNAME, default admin), the users live in
the database `<database>_users`; clients send MLFLOW_TRACKING_USERNAME / _PASSWORD.

PostgreSQL (Debian's package) is started if it is down; the role and the database are created if
missing (password from MLFLOW_DB_PASSWORD, default `mlflow`). Artifacts are uploaded through the
server into --artifacts. Runs in the foreground; Ctrl-C (or SIGTERM) stops the server.
Train against it with `python train.py tracking=server` (docs/tracking-server.md).
"""

from __future__ import annotations

import argparse
import getpass
import os
import signal
import subprocess
import sys
from pathlib import Path

from pipeline import PROJECT_ROOT, errors
from pipeline.tracking import auth
from pipeline.tracking import server as ts


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--port", type=int, default=5050, help="HTTP port on 127.0.0.1")
    parser.add_argument("--database", default="mlflow", help="PostgreSQL database name")
    parser.add_argument("--user", default="mlflow", help="PostgreSQL role that owns it")
    parser.add_argument(
        "--artifacts",
        type=Path,
        default=PROJECT_ROOT / "mlruns" / "server" / "artifacts",
        help="folder the server stores uploaded artifacts in",
    )
    parser.add_argument("--workers", type=int, default=2, help="server worker processes")
    return parser.parse_args(argv)


def users(argv: list[str]) -> int:
    """`add-user NAME` (password on stdin) and `grant NAME EXPERIMENT PERMISSION`."""
    parser = argparse.ArgumentParser(prog="pipeline-server")
    server = argparse.ArgumentParser(add_help=False)
    server.add_argument("--url", default="http://127.0.0.1:5050", help="the server")
    commands = parser.add_subparsers(dest="command", required=True)
    add = commands.add_parser(
        "add-user", parents=[server], help="create a user; the password is read from stdin"
    )
    add.add_argument("name")
    give = commands.add_parser(
        "grant", parents=[server], help="give a user a permission on an experiment"
    )
    give.add_argument("name")
    give.add_argument("experiment")
    give.add_argument("permission", choices=auth.PERMISSIONS)
    args = parser.parse_args(argv)
    try:
        if args.command == "add-user":
            if sys.stdin.isatty():
                password = getpass.getpass(f"password for {args.name}: ")
            else:
                password = sys.stdin.readline().rstrip("\n")
            auth.add_user(args.url, args.name, password)
            print(f"user {args.name} created on {args.url}")
        else:
            auth.grant(args.url, args.name, args.experiment, args.permission)
            print(f"user {args.name} may {args.permission} experiment {args.experiment}")
    except errors.ServerError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("add-user", "grant"):
        return users(argv)
    args = parse_args(argv)
    password = os.environ.get("MLFLOW_DB_PASSWORD", "mlflow")
    url = f"http://127.0.0.1:{args.port}"
    try:
        admin_user, _ = auth.admin()  # before anything is started or made
    except errors.ServerError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if ts.healthy(url):
        print(
            f"error: port {args.port} already answers as a server ({url}); "
            "stop it or pick another port: --port 5051",
            file=sys.stderr,
        )
        return 2
    try:
        cluster, started = ts.ensure_postgres()
    except errors.ServerError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if started:  # stopped again on the way out: this command leaves the machine as it found it
        print(f"PostgreSQL {cluster.version}/{cluster.name} was down: started it", flush=True)
    try:
        return serve(args, cluster, password, admin_user)
    finally:
        if started:
            cluster.stop()
            print(f"PostgreSQL {cluster.version}/{cluster.name}: stopped again", flush=True)


def serve(args: argparse.Namespace, cluster: ts.Cluster, password: str, admin_user: str) -> int:
    url = f"http://127.0.0.1:{args.port}"
    users_database = f"{args.database}_users"
    try:
        ts.ensure_database(cluster, args.database, args.user, password)
        ts.ensure_database(cluster, users_database, args.user, password)  # basic-auth's users
        # Optuna's studies (hparams_search, experiment=fair_comparison): a database of their own
        ts.ensure_database(cluster, "optuna", args.user, password)
    except errors.ServerError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    args.artifacts.mkdir(parents=True, exist_ok=True)
    backend = ts.database_uri(cluster, args.database, args.user)
    command = ts.mlflow_server_command(
        backend, args.artifacts, "127.0.0.1", args.port, args.workers, users=True
    )
    ini = auth.write_config(
        args.artifacts.parent / f"basic_auth-{args.port}.ini",
        ts.database_uri(cluster, users_database, args.user),
        admin_user,
    )
    env = {**ts.server_env(password), **auth.server_env(ini)}
    # Its own process group, so that stopping it also stops its worker processes.
    server = subprocess.Popen(command, env=env, start_new_session=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # run the `finally` below
    try:
        ts.wait_until_healthy(url, server)
        print(
            f"MLflow server on {url}: PostgreSQL database {args.database} "
            f"(port {cluster.port}), artifacts in {args.artifacts.resolve()}\n"
            f"Users: pipeline-server add-user NAME (password on stdin; admin {admin_user}, "
            f"password from MLFLOW_AUTH_ADMIN_PASSWORD)\n"
            f"Train against it: MLFLOW_TRACKING_USERNAME=NAME MLFLOW_TRACKING_PASSWORD=... "
            f"python train.py tracking=server tracking.uri={url}",
            flush=True,
        )
        return server.wait()
    except errors.ServerError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        ts.stop(server)
