"""The service's settings: one class, environment variables prefixed `POPS_`, nothing else reads os.environ."""
from __future__ import annotations

import logging
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

log = logging.getLogger(__name__)

# The embedded default keeps all state in one folder of the working directory.
STATE_DIR = Path(".pops")
DEFAULT_PEPPER = "changethis-pops-local-pepper"
_warned: list[str] = []  # warn about the default pepper once per process
_DB_SCHEMES = ("sqlite", "sqlite+pysqlite", "postgresql", "postgresql+psycopg")


class Settings(BaseSettings):
    """Where PrecisionOps keeps its state and how it reaches its services."""

    model_config = SettingsConfigDict(env_prefix="POPS_", env_file=None, extra="ignore")

    environment: Literal["local", "production"] = Field(
        "local", description="`production` refuses the embedded defaults that are unsafe on a shared host."
    )
    database_url: str = Field(
        f"sqlite:///{STATE_DIR / 'pops.db'}",
        description="SQLAlchemy URL: `sqlite:///path` (embedded) or `postgresql+psycopg://user@host/db`.",
    )
    broker_url: str | None = Field(None, description="Celery broker (Redis); None runs tasks in-process.")
    result_backend: str | None = Field(None, description="Celery result backend; defaults to the broker.")
    mlflow_tracking_uri: str = Field(
        default_factory=lambda: (STATE_DIR / "mlruns").resolve().as_uri(),
        description="MLflow store: a local file store (file URI) or a server URL.",
    )
    artifact_root: Path = Field(STATE_DIR / "artifacts", description="Content-addressed artifacts (corpora, engines).")
    models_roots: list[Path] = Field(
        default_factory=lambda: [Path("assets/models"), STATE_DIR / "models"],
        description="Folders a registered model path must lie under; nothing outside them is read.",
    )
    api_key_pepper: SecretStr = Field(
        SecretStr(DEFAULT_PEPPER), description="Server-side secret mixed into every API key hash (>= 16 chars)."
    )
    db_pool_size: int = Field(10, ge=1, le=200)
    db_max_overflow: int = Field(20, ge=0, le=400)
    max_upload_bytes: int = Field(64 * 1024 * 1024, ge=1024, description="Largest corpus upload accepted.")
    max_canary_batch: int = Field(1000, ge=1, le=100_000, description="Most canary samples in one POST.")
    canary_window_seconds: int = Field(60, ge=1, le=86_400, description="Width of a canary aggregate window.")
    seed_accelerators: bool = Field(True, description="Sync accelerator profiles from the runtime at startup.")
    job_visibility_timeout_s: int = Field(
        6 * 3600, ge=60, le=30 * 86_400,
        description="Seconds after which Redis hands a job whose worker has not acked it to another worker. It "
                    "must exceed the longest job (building a 70B engine takes hours), or a running job runs twice.")
    alert_webhook_url: str | None = Field(
        None, pattern=r"^https?://", description="Drift alerts are also POSTed here as JSON (retried, never blocking).")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    @field_validator("database_url")
    @classmethod
    def _known_database(cls, url: str) -> str:
        scheme = url.split("://", 1)[0]
        if scheme not in _DB_SCHEMES:
            raise ValueError(f"database_url scheme {scheme!r} is not supported; use one of {', '.join(_DB_SCHEMES)}")
        if scheme.startswith("postgresql") and scheme != "postgresql+psycopg":
            url = "postgresql+psycopg://" + url.split("://", 1)[1]  # psycopg 3 is the driver we ship
        return url

    @field_validator("artifact_root")
    @classmethod
    def _not_filesystem_root(cls, path: Path) -> Path:
        resolved = path.expanduser().resolve()
        if resolved == Path(resolved.anchor) or resolved == Path.home():
            raise ValueError(f"artifact_root {str(path)!r} would write into {resolved}; pick a dedicated folder")
        return resolved

    @field_validator("models_roots")
    @classmethod
    def _roots_are_narrow(cls, roots: list[Path]) -> list[Path]:
        resolved = []
        for root in roots:
            path = root.expanduser().resolve()
            if path == Path(path.anchor):
                raise ValueError("models_roots may not contain the filesystem root; list the model folders")
            resolved.append(path)
        return resolved

    @field_validator("api_key_pepper")
    @classmethod
    def _pepper_long_enough(cls, pepper: SecretStr) -> SecretStr:
        if len(pepper.get_secret_value()) < 16:
            raise ValueError("api_key_pepper must be at least 16 characters")
        return pepper

    @model_validator(mode="after")
    def _enforce_production_secrets(self) -> "Settings":
        if self.api_key_pepper.get_secret_value() == DEFAULT_PEPPER:
            message = "POPS_API_KEY_PEPPER is the default; set a secret for anything but local use"
            if self.environment == "production":
                raise ValueError(message)
            if not _warned:
                _warned.append(message)
                log.warning(message)
        if self.environment == "production" and self.database_url.startswith("sqlite"):
            raise ValueError("environment=production needs PostgreSQL; database_url is SQLite")
        return self

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @property
    def embedded_tasks(self) -> bool:
        """True when Celery tasks run in-process (no broker configured)."""
        return self.broker_url is None


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings, read once from the environment."""
    return Settings()
