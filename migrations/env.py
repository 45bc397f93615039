"""Alembic environment: the URL comes from controlplane.settings, the tables from every domain's models.

Callers that already hold a connection (tests, `pops db upgrade`) pass it as
`config.attributes["connection"]`; otherwise an engine is made from `Settings().database_url`.
"""
from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Connection

from controlplane.db import create_db_engine
from controlplane.registry import load_all_models
from controlplane.settings import Settings, get_settings

config = context.config
target_metadata = load_all_models().metadata


def _settings() -> Settings:
    url = config.attributes.get("database_url")
    return Settings(database_url=url) if url else get_settings()


def _configure(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",  # SQLite alters tables by copying them
        compare_type=True,
    )


def run_migrations_offline() -> None:
    """Emits SQL for the configured URL without connecting."""
    context.configure(url=_settings().database_url, target_metadata=target_metadata, literal_binds=True,
                      dialect_opts={"paramstyle": "named"})
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    """Migrates through a caller's connection, or one from the settings."""
    connection = config.attributes.get("connection")
    if connection is not None:
        _configure(connection)
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = create_db_engine(_settings())
    with engine.connect() as connection:
        _configure(connection)
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
