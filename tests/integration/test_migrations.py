"""Migrations are the schema: ``alembic upgrade head`` on an empty database yields exactly the
ORM models, on PostgreSQL and on SQLite."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, inspect

from pipeline import migrate
from pipeline.models import Base
from pipeline.settings import Settings


def _drift(url: str) -> list[object]:
    engine = create_engine(url)
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        diffs = compare_metadata(context, Base.metadata)
    engine.dispose()
    return list(diffs)


@pytest.mark.integration
def test_upgrade_head_on_empty_postgres_matches_models(fresh_database: str) -> None:
    url = Settings(database_url=fresh_database).db_url
    migrate.upgrade(url)
    assert _drift(url) == []
    tables = set(inspect(create_engine(url)).get_table_names())
    assert {"projects", "datasets", "tasks", "events", "alembic_version"} <= tables


def test_upgrade_head_on_empty_sqlite_matches_models(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'x.db'}"
    migrate.upgrade(url)
    assert _drift(url) == []
