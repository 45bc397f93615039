"""Settings refuse unsafe values; the `pops` CLI carries the runtime's commands plus admin, db and api."""
from __future__ import annotations

import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from controlplane.settings import DEFAULT_PEPPER, Settings


def test_environment_variables_with_prefix(monkeypatch, tmp_path):
    monkeypatch.setenv("POPS_DATABASE_URL", "postgresql://u@db:5432/pops")
    monkeypatch.setenv("POPS_ARTIFACT_ROOT", str(tmp_path / "art"))
    monkeypatch.setenv("POPS_BROKER_URL", "redis://127.0.0.1:6379/0")
    settings = Settings()
    assert settings.database_url == "postgresql+psycopg://u@db:5432/pops"  # psycopg 3 is the driver
    assert settings.artifact_root == (tmp_path / "art").resolve()
    assert not settings.embedded_tasks


@pytest.mark.parametrize("field, value, message", [
    ("database_url", "mysql://root@db/pops", "scheme 'mysql' is not supported"),
    ("artifact_root", "/", "pick a dedicated folder"),
    ("models_roots", ["/"], "may not contain the filesystem root"),
    ("api_key_pepper", "short", "at least 16 characters"),
])
def test_unsafe_values_are_refused(field, value, message):
    with pytest.raises(ValidationError, match=message):
        Settings(**{field: value})


def test_production_refuses_embedded_defaults():
    with pytest.raises(ValidationError, match="POPS_API_KEY_PEPPER is the default"):
        Settings(environment="production", database_url="postgresql+psycopg://u@db/pops")
    with pytest.raises(ValidationError, match="needs PostgreSQL"):
        Settings(environment="production", api_key_pepper="a-real-secret-of-some-length")
    assert Settings(environment="production", database_url="postgresql+psycopg://u@db/pops",
                    api_key_pepper="a-real-secret-of-some-length").api_key_pepper.get_secret_value() != DEFAULT_PEPPER


def test_pepper_is_never_printed():
    settings = Settings(api_key_pepper="super-secret-pepper-value")
    assert "super-secret-pepper-value" not in repr(settings) and "super-secret-pepper-value" not in str(settings)


@pytest.fixture
def cli_env(monkeypatch, tmp_path):
    from controlplane.settings import get_settings

    monkeypatch.setenv("POPS_DATABASE_URL", f"sqlite:///{tmp_path / 'pops.db'}")
    monkeypatch.setenv("POPS_API_KEY_PEPPER", "cli-test-pepper-0123456789")
    get_settings.cache_clear()
    yield tmp_path
    get_settings.cache_clear()


def test_cli_includes_runtime_commands_and_its_own():
    from controlplane.cli import app
    from runtime.cli import app as runtime_app

    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0
    names = {c.name for c in runtime_app.registered_commands} | {g.name for g in runtime_app.registered_groups}
    for name in names | {"admin", "db", "api"}:
        assert name in result.output, name


def test_db_upgrade_then_create_key_prints_it_once(cli_env):
    from sqlalchemy import create_engine, select
    from sqlalchemy.orm import Session

    from controlplane.auth import service
    from controlplane.auth.models import ApiKey
    from controlplane.cli import app

    runner = CliRunner()
    upgraded = runner.invoke(app, ["db", "upgrade"])
    assert upgraded.exit_code == 0, upgraded.output
    created = runner.invoke(app, ["admin", "create-key", "--owner", "root", "--role", "admin"])
    assert created.exit_code == 0, created.output
    key = created.stdout.strip().splitlines()[-1]
    assert key.startswith("pops_")
    engine = create_engine(f"sqlite:///{cli_env / 'pops.db'}")
    with Session(engine) as db:
        row = db.scalar(select(ApiKey))
        assert row.owner == "root" and key not in (row.key_hash, row.salt)
        assert service.authenticate(db=db, presented=key, pepper="cli-test-pepper-0123456789").id == row.id
    engine.dispose()
    bad = runner.invoke(app, ["admin", "create-key", "--owner", "x", "--role", "superuser"])
    assert bad.exit_code == 2 and "--role" in bad.output
