"""The one Alembic history builds and tears down the same schema on PostgreSQL and SQLite."""
from __future__ import annotations

import pytest
from sqlalchemy import create_engine, inspect

from controlplane import migrate
from controlplane.registry import load_all_models
from tests.controlplane.databases import create_database, drop_database, settings_for


def _tables(url: str) -> set[str]:
    engine = create_engine(url)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def _up_and_down(url: str, tmp_path) -> None:
    settings = settings_for(url, tmp_path)
    assert _tables(url) <= {"alembic_version"}
    migrate.upgrade(settings)
    expected = set(load_all_models().metadata.tables)
    assert expected <= _tables(url)
    migrate.downgrade(settings, "base")
    assert _tables(url) <= {"alembic_version"}
    migrate.upgrade(settings)  # and back up again: downgrade left nothing behind (types, functions, triggers)
    assert expected <= _tables(url)


@pytest.mark.services
def test_postgresql_upgrade_to_head_and_downgrade_to_base(tmp_path):
    url = create_database()
    try:
        _up_and_down(url, tmp_path)
    finally:
        drop_database(url)


def test_sqlite_upgrade_to_head_and_downgrade_to_base(tmp_path):
    _up_and_down(f"sqlite:///{tmp_path / 'pops.db'}", tmp_path)


@pytest.mark.services
def test_models_match_the_migrations(pg_engine):
    """Autogenerate finds nothing to add: the models and the migration history agree."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    with pg_engine.connect() as connection:
        diff = compare_metadata(MigrationContext.configure(connection), load_all_models().metadata)
    assert diff == []
