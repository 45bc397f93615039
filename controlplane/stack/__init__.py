"""`pops stack up|down|status`: docker-compose.yml's services as local processes, for hosts without Docker.

The compose file is the single source: each service's command, environment, dependencies and health
check are read from it (with compose's `${VAR}` interpolation from `.env`, or `.env.example` when
there is no `.env`) and run here unchanged. The image-only services have local stand-ins: the local
PostgreSQL (a dedicated database), the local Redis (a dedicated db number) and an MLflow file store.
What differs from containers is only where things are: the variables in `local_variables` point the
same commands at 127.0.0.1, local ports and a state folder.
"""

from controlplane.stack.compose import (
    COMPOSE_FILE,
    REPO,
    STAND_INS,
    Healthcheck,
    Service,
    StackError,
    interpolate,
    load_services,
    parse_duration,
    read_env_file,
    selected,
    start_order,
)
from controlplane.stack.local import (
    DEFAULT_STATE_DIR,
    PG_ADMIN_URL,
    REDIS_HOST,
    REDIS_PORT,
    StackConfig,
    local_variables,
    variables_for,
)
from controlplane.stack.processes import ADMIN_KEY, SERVICE_KEYS, Running, ServiceStatus, State, alive, down, status, up

__all__ = [
    "ADMIN_KEY", "COMPOSE_FILE", "DEFAULT_STATE_DIR", "PG_ADMIN_URL", "REDIS_HOST", "REDIS_PORT", "REPO",
    "SERVICE_KEYS", "STAND_INS", "Healthcheck", "Running", "Service", "ServiceStatus", "StackConfig", "StackError",
    "State", "alive", "down", "interpolate", "load_services", "local_variables", "parse_duration", "read_env_file",
    "selected", "start_order", "status", "up", "variables_for",
]
