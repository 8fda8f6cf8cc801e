"""Checks of the `tracking` group: the store is writable (sqlite) or an MLflow server answers."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from omegaconf import DictConfig

from pipeline.config.databases import check_password, check_server, check_sqlite_file
from pipeline.config.rules import DATABASE_SCHEMES, SERVER_SCHEMES, check, number
from pipeline.errors import ConfigError
from pipeline.tracking.store import check_sqlite, unwritable


def validate_tracking(cfg: DictConfig) -> None:
    """A store MLflow 3 opens, writable (sqlite) or an MLflow server that answers (http):
    checked before any run is made."""
    uri = str(cfg.tracking.uri)
    example = "sqlite:////tmp/mlruns/mlflow.db"
    scheme = urlsplit(uri).scheme.lower() if "://" in uri else ""
    use = "use sqlite:///<absolute path>/mlflow.db or an MLflow server's http(s)://host:port"
    if scheme == "file" or (not scheme and (uri.startswith((".", "/", "~")) or "/" in uri)):
        check(
            cfg,
            "tracking.uri",
            False,
            f"that is MLflow's plain file store, which MLflow 3 refuses; {use}",
            example,
        )
    if scheme.split("+")[0] not in (*DATABASE_SCHEMES, *SERVER_SCHEMES):
        check(cfg, "tracking.uri", False, f"not a tracking store URI; {use}", example)
    experiment = cfg.tracking.get("experiment")
    ok = isinstance(experiment, str) and experiment.strip() != ""
    check(cfg, "tracking.experiment", ok, "an experiment needs a name", "mnist-optimizers")
    number(cfg, "tracking.flush_every_s", 0, None, "5", low_open=True)
    if scheme == "sqlite":
        db = check_sqlite_file("tracking.uri", uri, example)
        check_sqlite(db.resolve())  # not sqlite, damaged, half made: says how to move it aside
        artifacts = cfg.tracking.get("artifact_root")
        if artifacts:  # where a new experiment's artifacts go (the database may be fine)
            folder = Path(str(artifacts)).absolute()
            while not folder.exists() and folder != folder.parent:  # checked, not created
                folder = folder.parent
            problem = unwritable(folder)
            check(cfg, "tracking.artifact_root", problem is None, f"{problem}", "mlruns/artifacts")
    elif scheme.split("+")[0] in DATABASE_SCHEMES:  # PostgreSQL, MySQL ...: one connection
        example = "postgresql+psycopg2://mlflow@127.0.0.1:5432/mlflow"
        check_password("tracking.uri", uri, example)
        check_server("tracking.uri", uri, example)
    elif scheme in SERVER_SCHEMES:
        parts = urlsplit(uri)
        if parts.username is not None or parts.password is not None:
            host = parts.netloc.rpartition("@")[2]
            masked = urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))
            bare = urlunsplit(parts._replace(netloc=host))
            raise ConfigError(
                f"tracking.uri={masked!r} is not allowed: credentials in the URI would be stored "
                "with every run (its params and config); set MLFLOW_TRACKING_USERNAME and "
                "MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN) in the environment, as "
                f"MLflow reads them, and drop them from the URI (e.g. tracking.uri={bare})"
            )
        problem = _not_mlflow(uri)
        check(cfg, "tracking.uri", problem is None, f"{problem}", example)


API_PROBE = "/api/2.0/mlflow/experiments/search?max_results=1"  # any MLflow tracking server


def _not_mlflow(uri: str, timeout_s: float = 5.0) -> str | None:
    """Why `uri` is no working MLflow tracking server (None if it is one).

    One request of MLflow's REST API with a short timeout (MLflow's own client retries for
    minutes first), with the credentials MLflow would send (MLFLOW_TRACKING_USERNAME and
    _PASSWORD, or _TOKEN). Its JSON answer also shows that the server's own store works.
    """
    import ssl
    import urllib.error
    import urllib.request

    url = f"{uri.rstrip('/')}{API_PROBE}"
    headers = {"Accept": "application/json"}
    user, password = (os.environ.get(f"MLFLOW_TRACKING_{k}") for k in ("USERNAME", "PASSWORD"))
    token = os.environ.get("MLFLOW_TRACKING_TOKEN")
    if user and password:
        pair = base64.b64encode(f"{user}:{password}".encode()).decode()
        headers["Authorization"] = f"Basic {pair}"
    elif token:
        headers["Authorization"] = f"Bearer {token}"
    context = None
    if uri.startswith("https://"):  # the TLS settings MLflow's client reads
        context = ssl.create_default_context(
            cafile=os.environ.get("MLFLOW_TRACKING_SERVER_CERT_PATH")
        )
        if os.environ.get("MLFLOW_TRACKING_INSECURE_TLS", "").lower() == "true":
            context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    start = "start it (make server) or point tracking.uri at a reachable server or a local store"
    try:
        request = urllib.request.Request(url, headers=headers)
        with urllib.request.urlopen(request, timeout=timeout_s, context=context) as response:
            json.load(response)
    except urllib.error.HTTPError as error:
        if error.code in (401, 403):
            return (
                f"the server refuses this client (HTTP {error.code}): set "
                "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN)"
            )
        if error.code >= 500:
            return (
                f"the MLflow server answers HTTP {error.code} on {API_PROBE}: its own store "
                "fails; see the server's log"
            )
        return (
            f"that server answers, but it is not an MLflow tracking server (HTTP {error.code} "
            f"on {API_PROBE}); {start}"
        )
    except (OSError, ValueError) as error:  # URLError, timeouts, bad ports; JSON errors too
        if isinstance(error, json.JSONDecodeError | UnicodeDecodeError):
            return (
                f"that server answers, but not with MLflow's JSON on {API_PROBE}: it is not an "
                f"MLflow tracking server; {start}"
            )
        return f"the tracking server does not answer ({getattr(error, 'reason', error)}); {start}"
    return None
