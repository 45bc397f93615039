"""Databases for control-plane tests: PostgreSQL (a dedicated database per session) and SQLite.

Both are built by the Alembic migrations, never `create_all`. Each test runs inside a transaction
that is rolled back afterwards; the code under test commits SAVEPOINTs inside it (Dispatch's
begin_nested pattern), so commits behave as in production and nothing leaks between tests.

`services` tests need PostgreSQL at 127.0.0.1:5432 and Redis at 127.0.0.1:6379. When `CI=true`
an unreachable service FAILS the test; elsewhere it is skipped.
"""
from __future__ import annotations

import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine
from sqlalchemy.orm import Session

_REPO = str(Path(__file__).resolve().parents[2])
if _REPO not in sys.path:  # `tests.*` helpers import from the repository root, however pytest was started
    sys.path.insert(0, _REPO)

from controlplane import migrate  # noqa: E402
from controlplane.accelerators import service as accelerators_service
from controlplane.auth import service as auth_service
from controlplane.auth.models import Role
from controlplane.auth.schemas import ApiKeyCreate
from controlplane.db import create_db_engine, get_db, make_session_factory
from controlplane.main import create_app
from controlplane.settings import Settings
from tests.controlplane.databases import (
    PEPPER,
    REDIS_HOST,
    REDIS_PORT,
    create_database,
    drop_database,
    service_unavailable,
    settings_for,
)


def _migrate_and_seed(settings: Settings) -> Engine:
    migrate.upgrade(settings)
    engine = create_db_engine(settings)
    with make_session_factory(engine)() as db:
        accelerators_service.sync_from_runtime(db=db)
    return engine


@pytest.fixture(scope="session")
def redis_url() -> str:
    """Redis at 127.0.0.1:6379 (db 0); fails in CI, skips elsewhere, when unreachable."""
    try:
        with socket.create_connection((REDIS_HOST, REDIS_PORT), timeout=3) as sock:
            sock.sendall(b"PING\r\n")
            if not sock.recv(16).startswith(b"+PONG"):
                raise ConnectionError("no PONG")
    except OSError as exc:
        service_unavailable("Redis at 127.0.0.1:6379", exc)
    return f"redis://{REDIS_HOST}:{REDIS_PORT}/0"


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    """A PostgreSQL database for this session, migrated to head, accelerators seeded."""
    url = create_database()
    yield url
    drop_database(url)


@pytest.fixture(scope="session")
def pg_engine(pg_database, tmp_path_factory) -> Iterator[Engine]:
    engine = _migrate_and_seed(settings_for(pg_database, tmp_path_factory.mktemp("pg")))
    yield engine
    engine.dispose()


@pytest.fixture(scope="session")
def sqlite_engine(tmp_path_factory) -> Iterator[Engine]:
    """An SQLite file database for this session, migrated to head, accelerators seeded."""
    path = tmp_path_factory.mktemp("sqlite") / "pops.db"
    engine = _migrate_and_seed(settings_for(f"sqlite:///{path}", path.parent))
    yield engine
    engine.dispose()


def _transactional_session(engine: Engine) -> Iterator[Session]:
    connection = engine.connect()
    outer = connection.begin()
    session = Session(bind=connection, join_transaction_mode="create_savepoint", expire_on_commit=False,
                      autoflush=False)
    try:
        yield session
    finally:
        session.close()
        outer.rollback()
        connection.close()


@pytest.fixture
def pg_session(pg_engine) -> Iterator[Session]:
    """A PostgreSQL session whose work is rolled back after the test."""
    yield from _transactional_session(pg_engine)


@pytest.fixture
def sqlite_session(sqlite_engine) -> Iterator[Session]:
    """An SQLite session whose work is rolled back after the test."""
    yield from _transactional_session(sqlite_engine)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.services)])
def backend(request) -> str:
    """Runs a test on both databases (the PostgreSQL run is a `services` test)."""
    return request.param


@pytest.fixture
def session(backend, request) -> Session:
    """A rolled-back session on the backend under test; factories write through it."""
    from tests import factories

    db = request.getfixturevalue("pg_session" if backend == "postgresql" else "sqlite_session")
    factories.bind(db)
    yield db
    factories.bind(None)


@pytest.fixture
def settings(session, backend, tmp_path) -> Settings:
    url = session.get_bind().engine.url.render_as_string(hide_password=False)
    return settings_for(url, tmp_path)


@pytest.fixture
def app(settings, session):
    """The app with its sessions replaced by the test's rolled-back one."""
    application = create_app(settings)

    def _test_db() -> Iterator[Session]:
        try:
            yield session
        finally:
            session.rollback()  # like get_db: drop what a failed request left, keep committed savepoints

    application.dependency_overrides[get_db] = _test_db
    yield application
    application.state.engine.dispose()


@pytest.fixture
def client(app) -> Iterator[TestClient]:
    with TestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client


@pytest.fixture
def keys(session) -> dict[Role, str]:
    """One live key per role, owner named after the role; role -> plaintext."""
    made = {}
    for role in Role:
        _, plaintext = auth_service.create(db=session, key_in=ApiKeyCreate(owner=f"{role.value}-user", role=role),
                                           pepper=PEPPER, actor="test")
        made[role] = plaintext
    return made


@pytest.fixture
def as_role(keys):
    """Headers authenticating as a role: `as_role(Role.approver)`."""
    return lambda role: {"Authorization": f"Bearer {keys[role]}"}
