"""Where the local stack differs from containers: the variables that point the compose commands at local
stand-ins (a dedicated PostgreSQL database, a Redis db number, an MLflow file store) and a state folder."""
from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from controlplane.stack.compose import REPO, StackError, read_env_file

DEFAULT_STATE_DIR = Path(".pops") / "stack"
PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/test"
REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379


@dataclass
class StackConfig:
    """Where the local stack keeps its state and which local resources stand in for the images."""

    state_dir: Path = DEFAULT_STATE_DIR
    database: str = "pops_stack"
    redis_db: int = 7
    env_file: Path | None = None  # default: .env if present, else .env.example
    profiles: tuple[str, ...] = ()
    overrides: dict[str, str] = field(default_factory=dict)  # variables set on the command line

    def __post_init__(self) -> None:
        self.state_dir = Path(self.state_dir).resolve()
        if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", self.database):
            raise StackError(f"database: {self.database!r} must be a lowercase identifier (letters, digits, _)")
        if not 0 <= self.redis_db <= 15:
            raise StackError(f"redis_db: {self.redis_db} must be between 0 and 15")

    @property
    def database_url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:5432/{self.database}"

    @property
    def broker_url(self) -> str:
        return f"redis://{REDIS_HOST}:{REDIS_PORT}/{self.redis_db}"

    def env_path(self) -> Path:
        if self.env_file is not None:
            return Path(self.env_file)
        return REPO / ".env" if (REPO / ".env").is_file() else REPO / ".env.example"


def local_variables(config: StackConfig) -> dict[str, str]:
    """The variables that point the compose commands at local stand-ins, 127.0.0.1 and the state folder."""
    state = config.state_dir
    return {
        "POPS_DATABASE_URL": config.database_url,
        "POPS_BROKER_URL": config.broker_url,
        "POPS_MLFLOW_TRACKING_URI": (state / "mlruns").as_uri(),
        "POPS_ARTIFACT_ROOT": str(state / "artifacts"),
        "POPS_MODELS_ROOTS": json.dumps([str(REPO / "assets" / "models"), str(state / "models")]),
        "POPS_API_HOST": "127.0.0.1",
        "POPS_BIND_HOST": "127.0.0.1",
    }


def variables_for(config: StackConfig, keys: Mapping[str, str] = ()) -> dict[str, str]:
    """Compose's precedence (the shell over the env file), then the local stand-ins, keys and overrides."""
    variables = read_env_file(config.env_path())
    variables.update({k: v for k, v in os.environ.items() if k.startswith(("POPS_", "POSTGRES_"))})
    variables.update(local_variables(config))
    variables.update({k: v for k, v in dict(keys).items() if not variables.get(k)})
    variables.update(config.overrides)
    return variables


# --- stand-ins ------------------------------------------------------------------------------------

def ensure_database(config: StackConfig) -> None:
    import psycopg

    try:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=5) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (config.database,)).fetchone()
            if not exists:
                conn.execute(f'CREATE DATABASE "{config.database}"')
    except psycopg.OperationalError as exc:
        raise StackError(f"postgres: the local PostgreSQL at 127.0.0.1:5432 is unreachable ({exc}); start it") from exc


def drop_database(config: StackConfig) -> None:
    import psycopg

    with psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=5) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{config.database}" WITH (FORCE)')


def redis_client(config: StackConfig):
    import redis

    return redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=config.redis_db, socket_timeout=5,
                       socket_connect_timeout=5)


def check_stand_in(name: str, config: StackConfig) -> None:
    """Makes the stand-in of an image-only service ready, or says what is missing."""
    if name == "postgres":
        ensure_database(config)
    elif name == "redis":
        import redis

        try:
            redis_client(config).ping()
        except redis.RedisError as exc:
            raise StackError(f"redis: the local Redis at {REDIS_HOST}:{REDIS_PORT} is unreachable ({exc}); "
                             "start it") from exc
    elif name == "mlflow":
        (config.state_dir / "mlruns").mkdir(parents=True, exist_ok=True)
