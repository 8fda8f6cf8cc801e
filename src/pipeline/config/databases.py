"""Checks of a database URL (SQLAlchemy's form) before anything is written to it: the MLflow
store (`tracking.uri=sqlite:///...`, `postgresql+psycopg2://...`) and Optuna's storage.

A password is never accepted inside the URL: the URL is recorded with every run (its params,
its config.yaml) and printed in messages; PostgreSQL's libpq reads PGPASSWORD from the
environment instead. A server database is asked once, with a short timeout, so that a wrong
host, port, driver or login is one line before any run exists, not a traceback after.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from pipeline.errors import ConfigError
from pipeline.redact import mask
from pipeline.tracking.store import HEADER, unwritable

CONNECT_TIMEOUT_S = 5


def refuse(key: str, url: str, why: str, example: str) -> None:
    raise ConfigError(f"{key}={mask(url)!r} is not allowed: {why} (e.g. {key}={example})")


def check_password(key: str, url: str, example: str) -> None:
    """No password in the URL (user:password@ or ?password=)."""
    parts = urlsplit(url)
    query = {k.lower() for k in parse_qs(parts.query)}
    if parts.password is not None or query & {"password", "passwd", "pwd"}:
        refuse(
            key,
            url,
            "a password in the URL would be recorded with every run and printed; drop it and "
            "set PGPASSWORD in the environment (PostgreSQL's libpq reads it)",
            example,
        )


def check_sqlite_file(key: str, url: str, example: str) -> Path:
    """The database file of a `sqlite:///` URL can be created or written: its folder is
    writable and the path is no folder. Returns the path."""
    if not url.startswith("sqlite:///") or url == "sqlite:///":
        refuse(key, url, "no database file in it; use sqlite:///<absolute path>/<name>.db", example)
    db = Path(url.removeprefix("sqlite:///"))
    if db.is_dir():
        refuse(key, url, f"{db} is a folder, not a database file; name a file in it", example)
    problem = unwritable(db.parent)
    if problem is None and db.exists() and not os.access(db, os.R_OK | os.W_OK):
        problem = f"the database {db} is read-only"
    if problem is not None:
        refuse(key, url, problem, example)
    return db


def check_database(key: str, url: str, example: str) -> None:
    """A usable database URL that is not the MLflow store's (Optuna's storage): no password,
    a sqlite file that can be written and is sqlite, or a server that lets us in."""
    check_password(key, url, example)
    if url.startswith("sqlite:"):
        db = check_sqlite_file(key, url, example)
        if db.is_file() and db.stat().st_size > 0:
            with open(db, "rb") as file:
                if file.read(len(HEADER)) != HEADER:
                    refuse(key, url, f"{db} is not an SQLite database", example)
        return
    check_server(key, url, example)


def check_server(key: str, url: str, example: str) -> None:
    """One connection to a server database (PostgreSQL, MySQL ...), with a short timeout."""
    import sqlalchemy
    from sqlalchemy import exc

    try:
        parsed = sqlalchemy.engine.make_url(url)
        connect_args = {"connect_timeout": CONNECT_TIMEOUT_S}
        if parsed.get_backend_name() not in ("postgresql", "mysql"):
            connect_args = {}
        engine = sqlalchemy.create_engine(
            parsed, poolclass=sqlalchemy.pool.NullPool, connect_args=connect_args
        )
    except (exc.ArgumentError, exc.NoSuchModuleError, ValueError) as error:
        refuse(key, url, f"not a database URL SQLAlchemy knows ({first_line(error)})", example)
    except ImportError as error:  # e.g. plain postgresql:// wants psycopg 3 under SQLAlchemy 2.1
        refuse(
            key,
            url,
            f"its database driver is not installed ({error}); name an installed one, "
            "e.g. postgresql+psycopg2://",
            example,
        )
    try:
        with engine.connect():
            pass
    except exc.DBAPIError as error:  # refused, timed out, unknown database, login refused
        refuse(
            key,
            url,
            f"the database does not let us in ({first_line(error.orig or error)}); start it "
            "(make server), or fix the host, port, database name, user or PGPASSWORD",
            example,
        )
    finally:
        engine.dispose()


def first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return mask(" ".join(lines[:2]) if lines else type(error).__name__)[:300]
