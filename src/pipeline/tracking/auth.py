"""The tracking server's users: MLflow's own basic-auth app (`mlflow server --app-name
basic-auth`), configured by us, its users made by `pipeline-server add-user`.

- Passwords only ever travel through the environment or stdin: the admin's is
  MLFLOW_AUTH_ADMIN_PASSWORD (MLflow reads it when it makes the admin on first start), a client's
  is MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD (MLflow's client sends them), a new
  user's is read from stdin. None is on a command line (`ps`), in the ini file, a param, a tag.
- Permissions are MLflow's, per experiment: every user may READ everything (default_permission);
  whoever creates an experiment MANAGEs it; anyone else writes its runs only once granted EDIT
  (`pipeline-server grant USER EXPERIMENT EDIT`). The admin may do anything.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import warnings
from collections.abc import Iterator
from pathlib import Path

from pipeline.errors import ServerError

ADMIN_USER_ENV, ADMIN_PASSWORD_ENV = "MLFLOW_AUTH_ADMIN_USERNAME", "MLFLOW_AUTH_ADMIN_PASSWORD"
CONFIG_ENV = "MLFLOW_AUTH_CONFIG_PATH"  # where MLflow's auth app reads its ini file
SECRET_ENV = "MLFLOW_FLASK_SERVER_SECRET_KEY"  # the auth app's CSRF key: the same in every worker
MIN_PASSWORD = 12  # characters: MLflow's basic-auth refuses shorter passwords
PERMISSIONS = ("READ", "EDIT", "MANAGE", "NO_PERMISSIONS")


def admin() -> tuple[str, str]:
    """(admin user, admin password) from the environment; ServerError if no password is set."""
    password = os.environ.get(ADMIN_PASSWORD_ENV)
    if not password:
        raise ServerError(
            f"{ADMIN_PASSWORD_ENV} is not set: the server's users need an admin; set it in the "
            f"environment (e.g. export {ADMIN_PASSWORD_ENV}=$(openssl rand -base64 18)), never "
            "on a command line"
        )
    if len(password) < MIN_PASSWORD:  # MLflow's rule; its server would die with a traceback
        raise ServerError(
            f"{ADMIN_PASSWORD_ENV} is too short: MLflow wants at least {MIN_PASSWORD} characters"
        )
    return os.environ.get(ADMIN_USER_ENV) or "admin", password


def write_config(path: Path, users_database_uri: str, admin_user: str) -> Path:
    """MLflow's basic_auth.ini for our server: users kept in `users_database_uri` (no password
    in it: the server has PGPASSWORD), the admin's password left to the environment."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "[mlflow]\n"
        "default_permission = READ\n"
        f"database_uri = {users_database_uri}\n"
        f"admin_username = {admin_user}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
    )
    path.chmod(0o600)
    return path


def server_env(config: Path) -> dict[str, str]:
    """What the auth app reads from its environment: the ini file, and a CSRF secret key kept
    (mode 600) next to it, so that it stays the same across restarts; MLFLOW_FLASK_SERVER_SECRET_KEY
    if set wins."""
    key_file = config.with_suffix(".key")
    if not key_file.is_file():
        key_file.touch(mode=0o600)
        key_file.write_text(secrets.token_urlsafe(32))
    key = os.environ.get(SECRET_ENV) or key_file.read_text().strip()
    return {CONFIG_ENV: str(config), SECRET_ENV: key}


@contextlib.contextmanager
def as_admin() -> Iterator[None]:
    """MLflow's client sends MLFLOW_TRACKING_USERNAME/PASSWORD: the admin's, inside the block."""
    user, password = admin()
    keys = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")
    saved = {key: os.environ.get(key) for key in keys}
    os.environ.update(dict(zip(keys, (user, password), strict=True)))
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _explained(error: Exception, url: str) -> ServerError:
    text = str(error)
    # "already exists" first, and 401 as a status code only: the error's text can hold ids
    # and values with those three digits in them
    if "RESOURCE_ALREADY_EXISTS" in text or "already exists" in text:
        return ServerError(
            f"it exists already on {url} ({text.split(':')[1].split('.')[0].strip()})"
        )
    if re.search(r"\b401\b", text) or "Unauthorized" in text:
        return ServerError(f"the server at {url} refuses the admin: check {ADMIN_PASSWORD_ENV}")
    return ServerError(f"the server at {url} refused: {text.splitlines()[0][:300]}")


def _auth_client(url: str):  # MLflow's AuthServiceClient
    with warnings.catch_warnings():  # the server package's own deprecation notes at import
        warnings.simplefilter("ignore")
        from mlflow.server.auth.client import AuthServiceClient
    return AuthServiceClient(url)


def add_user(url: str, name: str, password: str) -> None:
    """Create the user `name` on the server at `url` (as the admin)."""
    from mlflow.exceptions import MlflowException

    if len(password) < MIN_PASSWORD:
        raise ServerError(
            f"the password for user {name} (read from stdin) has {len(password)} characters: "
            f"MLflow wants at least {MIN_PASSWORD}"
        )
    with as_admin():
        try:
            _auth_client(url).create_user(name, password)
        except MlflowException as error:
            raise _explained(error, url) from None


def grant(url: str, name: str, experiment: str, permission: str) -> None:
    """Give user `name` `permission` on the experiment named `experiment` (as the admin)."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    if permission not in PERMISSIONS:
        raise ServerError(f"permission {permission!r}: choose one of {', '.join(PERMISSIONS)}")
    with as_admin():
        try:
            found = MlflowClient(url).get_experiment_by_name(experiment)
            if found is None:
                raise ServerError(f"no experiment {experiment!r} on {url}")
            # MLflow 3.17's per-user grant API (AuthServiceClient.grant_user_permission)
            _auth_client(url).grant_user_permission(
                name, "experiment", found.experiment_id, permission
            )
        except MlflowException as error:
            raise _explained(error, url) from None
