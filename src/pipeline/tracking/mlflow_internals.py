"""Every use of MLflow's private API, in one place (tests/test_mlflow_contract.py holds each).

MLflow offers no public way to ask for the schema revision it expects, to close the database
connections it keeps per store URI, or to list the tables its ORM defines; tracking.store needs
all three to build and upgrade a sqlite store aside. pyproject.toml caps mlflow at the newest
minor version the contract tests passed on.
"""

from __future__ import annotations


def latest_schema_revision() -> str:
    """The alembic revision of the installed MLflow's schema (what MLflow compares against)."""
    from mlflow.store.db.utils import _get_latest_schema_revision

    return _get_latest_schema_revision()


def orm_tables() -> set[str]:
    """The names of the tables MLflow's ORM defines (its models loaded first)."""
    import mlflow.store.db.utils  # noqa: F401  (imports every ORM model: tracking, registry)
    from mlflow.store.db.base_sql_model import Base

    return set(Base.metadata.tables)


def dispose_engine(uri: str) -> bool:
    """Close the connections MLflow keeps for the store at `uri` (one engine per URI, cached
    on SqlAlchemyStore), so that its database file can be moved; False if it had none."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    engine = SqlAlchemyStore._engine_map.pop(uri, None)
    if engine is None:
        return False
    engine.dispose()
    return True
