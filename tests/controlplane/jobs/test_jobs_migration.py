"""Migrations 0002 (the jobs table) and 0004 (the search kind) go up and down on SQLite and PostgreSQL."""
from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.exc import IntegrityError

from controlplane.jobs.models import Job

from .conftest import migrate, require_services


def downgrade(database_url: str, revision: str) -> None:
    from alembic import command
    from alembic.config import Config

    from .conftest import REPO

    config = Config(str(REPO / "alembic.ini"))
    config.attributes["database_url"] = database_url
    command.downgrade(config, revision)


def check_up_and_down(url: str, engine_url: str) -> None:
    engine = create_engine(engine_url)
    try:
        migrate(url, "0001")
        assert "jobs" not in inspect(engine).get_table_names()
        migrate(url, "0002")
        inspector = inspect(engine)
        assert {c["name"] for c in inspector.get_columns("jobs")} == set(Job.__table__.columns.keys())
        assert [u["column_names"] for u in inspector.get_unique_constraints("jobs")] == [["idempotency_key"]]
        with engine.connect() as connection:
            diffs = compare_metadata(MigrationContext.configure(connection, opts={"compare_type": True}),
                                     Job.metadata)
        assert [d for d in diffs if "jobs" in repr(d)] == []  # the migration builds what the model declares
        downgrade(url, "0001")
        tables = inspect(engine).get_table_names()
        assert "jobs" not in tables and "engines" in tables  # only 0002's table goes
    finally:
        engine.dispose()


def test_jobs_migration_on_sqlite(tmp_path):
    url = f"sqlite:///{tmp_path / 'm.db'}"
    check_up_and_down(url, url)


@pytest.mark.services
def test_jobs_migration_on_postgresql():
    from tests.controlplane.databases import create_database, drop_database

    require_services()
    url = create_database()
    try:
        check_up_and_down(url, url)
    finally:
        drop_database(url)


def _insert_job(engine, kind: str) -> None:
    with engine.begin() as connection:
        connection.execute(text(
            "INSERT INTO jobs (kind, status, progress, params, params_hash, attempts, queue, submitted_by, created_at) "
            "VALUES (:kind, 'queued', 0, '{}', 'x', 0, 'cpu', 'tests', CURRENT_TIMESTAMP)"), {"kind": kind})


def _kinds(engine) -> list[str]:
    with engine.connect() as connection:
        return sorted(connection.execute(text("SELECT kind FROM jobs")).scalars())


def check_search_kind_up_and_down(url: str) -> None:
    """0004 lets the jobs table hold search jobs; downgrading drops them and refuses the kind again."""
    engine = create_engine(url)
    try:
        migrate(url, "0003")
        _insert_job(engine, "build")
        with pytest.raises(IntegrityError):
            _insert_job(engine, "search")
        migrate(url, "0004")
        _insert_job(engine, "search")
        assert _kinds(engine) == ["build", "search"]
        indexes = {i["name"] for i in inspect(engine).get_indexes("jobs")}
        assert {"ix_jobs_kind", "ix_jobs_status_created"} <= indexes  # SQLite's table copy kept them
        downgrade(url, "0003")
        assert _kinds(engine) == ["build"]
        with pytest.raises(IntegrityError):
            _insert_job(engine, "search")
        migrate(url, "0004")
        _insert_job(engine, "search")
        with pytest.raises(IntegrityError):
            _insert_job(engine, "train")
    finally:
        engine.dispose()


def test_search_kind_migration_on_sqlite(tmp_path):
    check_search_kind_up_and_down(f"sqlite:///{tmp_path / 'm.db'}")


@pytest.mark.services
def test_search_kind_migration_on_postgresql():
    from tests.controlplane.databases import create_database, drop_database

    require_services()
    url = create_database()
    try:
        check_search_kind_up_and_down(url)
    finally:
        drop_database(url)
