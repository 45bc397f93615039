"""Creating and dropping test databases, and test settings (shared by conftest, tests and bench)."""
from __future__ import annotations

import os
import uuid
from pathlib import Path

import psycopg
import pytest

from controlplane.settings import Settings

REPO = Path(__file__).resolve().parents[2]
REFERENCE_MODEL = REPO / "assets" / "models" / "pops-llama-tiny"
PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/test"
PG_URL_TEMPLATE = "postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379
PEPPER = "test-pepper-0123456789abcdef"
IN_CI = os.environ.get("CI", "").lower() == "true"


def service_unavailable(what: str, error: Exception) -> None:
    """Fails loudly in CI, skips elsewhere."""
    message = f"{what} is unreachable: {type(error).__name__}: {error}"
    if IN_CI:
        pytest.fail(f"CI=true and {message}", pytrace=False)
    pytest.skip(message)


def _admin_connection() -> psycopg.Connection:
    return psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=3)


def create_database() -> str:
    """Creates an empty PostgreSQL database with a unique name; returns its SQLAlchemy URL."""
    name = f"pops_test_{uuid.uuid4().hex[:12]}"
    try:
        with _admin_connection() as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.OperationalError as exc:
        service_unavailable("PostgreSQL at 127.0.0.1:5432", exc)
    return PG_URL_TEMPLATE.format(name=name)


def drop_database(url: str) -> None:
    """Drops a database made by create_database, closing whatever still connects to it."""
    name = url.rsplit("/", 1)[1]
    with _admin_connection() as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def settings_for(database_url: str, tmp: Path, **overrides) -> Settings:
    """Settings for a test app: its own artifact folder, the reference model's folder allowed."""
    return Settings(
        database_url=database_url,
        artifact_root=tmp / "artifacts",
        models_roots=[REPO / "assets" / "models", tmp / "models"],
        mlflow_tracking_uri=(tmp / "mlruns").as_uri(),
        api_key_pepper=PEPPER,
        seed_accelerators=False,
        **overrides,
    )
