"""What the pipeline relies on in MLflow's private API, held on its own.

pipeline.tracking.mlflow_internals is the only module of the pipeline that touches MLflow's
privates; tests/test_store.py uses `_get_alembic_config` to make a store as an older MLflow did.
Each test names one thing relied on and fails when an MLflow release changes it; pyproject.toml
caps mlflow at the newest minor version these tests passed on.
"""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

from conftest import _empty_store_db
from mlflow.tracking import MlflowClient

from pipeline.tracking import mlflow_internals
from pipeline.tracking.store import CORE_TABLES


def tables_of(db: Path) -> set[str]:
    with sqlite3.connect(db) as connection:
        query = "SELECT name FROM sqlite_master WHERE type = 'table'"
        return {name for (name,) in connection.execute(query)}


def revision_of(db: Path) -> str:
    with sqlite3.connect(db) as connection:
        return connection.execute("SELECT version_num FROM alembic_version").fetchone()[0]


def test_latest_schema_revision_is_what_a_new_store_gets():
    """`mlflow.store.db.utils._get_latest_schema_revision()`: the revision MLflow writes into
    a store it creates (tracking.store upgrades a store whose revision differs)."""
    assert revision_of(_empty_store_db()) == mlflow_internals.latest_schema_revision()


def test_orm_tables_are_the_tables_of_a_new_store():
    """`mlflow.store.db.base_sql_model.Base.metadata`: every table MLflow creates, so that a
    store with fewer is known to be half made."""
    tables = mlflow_internals.orm_tables()
    assert CORE_TABLES - {"alembic_version"} <= tables
    assert tables == tables_of(_empty_store_db()) - {"alembic_version"}


def test_engine_cache_holds_one_engine_per_uri(tmp_path):
    """`SqlAlchemyStore._engine_map`: MLflow keeps a store's engine (its open connections) per
    URI; disposing of it lets the database file be moved (tracking.store builds stores aside)."""
    db = tmp_path / "mlflow.db"
    shutil.copy(_empty_store_db(), db)
    uri = f"sqlite:///{db}"
    MlflowClient(uri).search_experiments()
    assert mlflow_internals.dispose_engine(uri) is True
    assert mlflow_internals.dispose_engine(uri) is False  # gone from the cache
    moved = tmp_path / "moved.db"
    db.rename(moved)
    assert [e.name for e in MlflowClient(f"sqlite:///{moved}").search_experiments()] == ["Default"]


def test_alembic_config_is_where_tests_make_an_older_store():
    """`mlflow.store.db.utils._get_alembic_config(uri)`: tests/test_store.py runs MLflow's own
    migrations up to an older revision with it."""
    from mlflow.store.db.utils import _get_alembic_config

    config = _get_alembic_config("sqlite:///:memory:")
    assert config.get_main_option("sqlalchemy.url") == "sqlite:///:memory:"
    assert config.get_main_option("script_location")
