"""Running the Alembic migrations from code (CLI, tests) with the URL from Settings."""
from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy.engine import Connection

from controlplane.settings import Settings

MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"


def alembic_config(settings: Settings, *, connection: Connection | None = None) -> Config:
    """An Alembic config for `settings.database_url` (or an open connection) that needs no alembic.ini."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["database_url"] = settings.database_url
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def upgrade(settings: Settings, revision: str = "head", *, connection: Connection | None = None) -> None:
    """Migrates the database up to `revision`."""
    command.upgrade(alembic_config(settings, connection=connection), revision)


def downgrade(settings: Settings, revision: str = "base", *, connection: Connection | None = None) -> None:
    """Migrates the database down to `revision`."""
    command.downgrade(alembic_config(settings, connection=connection), revision)
