"""`pops stack up|down|status`: docker-compose.yml's services as local processes, for hosts without Docker.

The compose file is the single source: each service's command, environment, dependencies and health
check are read from it (with compose's `${VAR}` interpolation from `.env`, or `.env.example` when
there is no `.env`) and run here unchanged. The image-only services have local stand-ins: the local
PostgreSQL (a dedicated database), the local Redis (a dedicated db number) and an MLflow file store.
What differs from containers is only where things are: the variables in `local_variables` point the
same commands at 127.0.0.1, local ports and a state folder.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
COMPOSE_FILE = REPO / "docker-compose.yml"
DEFAULT_STATE_DIR = Path(".pops") / "stack"
PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/test"
REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379

# Services that run from third-party images; here, what stands in for them.
STAND_INS = {
    "postgres": "local PostgreSQL at 127.0.0.1:5432",
    "redis": "local Redis at 127.0.0.1:6379",
    "mlflow": "an MLflow file store in the state folder",
}
# Keys the services need, created once the API has migrated the database.
ADMIN_KEY = "POPS_STACK_ADMIN_KEY"
SERVICE_KEYS = {
    "POPS_SERVE_API_KEY": ("stack-serve", "submitter", "serving posts canary samples"),
    "POPS_DASHBOARD_API_KEY": ("stack-dashboard", "viewer", "the dashboard's default key"),
    "POPS_STACK_ADMIN_KEY": ("stack-admin", "admin", "the operator of the local stack"),
}
# Only these reach a service besides its compose `environment`: a container inherits nothing either.
_BASE_ENV = ("HOME", "LANG", "LC_ALL", "TMPDIR", "TZ", "USER", "HF_HOME", "TORCH_HOME")


class StackError(Exception):
    """The stack could not be brought up, read or taken down; the message says why and what to do."""


# --- compose: interpolation and services ------------------------------------------------------

_NAME = r"[A-Za-z_][A-Za-z0-9_]*"


def interpolate(text: str, variables: Mapping[str, str], *, where: str = "") -> str:
    """Compose's interpolation: `$$`, `$VAR`, `${VAR}`, `${VAR:-default}`, `${VAR-default}`, `${VAR:?error}`,
    `${VAR?error}`, `${VAR:+alt}`, `${VAR+alt}`; defaults may nest."""
    out, i = [], 0
    while i < len(text):
        ch = text[i]
        if ch != "$":
            out.append(ch)
            i += 1
            continue
        if text.startswith("$$", i):
            out.append("$")
            i += 2
            continue
        if text.startswith("${", i):
            end = _closing_brace(text, i + 2, where)
            out.append(_expand(text[i + 2:end], variables, where))
            i = end + 1
            continue
        match = re.match(_NAME, text[i + 1:])
        if match:
            out.append(variables.get(match.group(0), ""))
            i += 1 + match.end()
        else:
            out.append(ch)
            i += 1
    return "".join(out)


def _closing_brace(text: str, start: int, where: str) -> int:
    depth = 1
    for j in range(start, len(text)):
        if text.startswith("${", j):
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return j
    raise StackError(f"{where}: unterminated ${{ in {text!r}")


def _expand(body: str, variables: Mapping[str, str], where: str) -> str:
    match = re.match(rf"({_NAME})(?:(:?[-?+])(.*))?$", body, re.S)
    if not match:
        raise StackError(f"{where}: invalid interpolation ${{{body}}}")
    name, op, arg = match.group(1), match.group(2), match.group(3) or ""
    value = variables.get(name)
    unset_or_empty = not value if op and op.startswith(":") else value is None
    if op in (":-", "-"):
        return interpolate(arg, variables, where=where) if unset_or_empty else value
    if op in (":?", "?"):
        if unset_or_empty:
            raise StackError(f"{where}: {name} is required: {interpolate(arg, variables, where=where) or 'set it'}")
        return value
    if op in (":+", "+"):
        return "" if unset_or_empty else interpolate(arg, variables, where=where)
    return value or ""


def read_env_file(path: Path) -> dict[str, str]:
    """A compose `.env` file: KEY=VALUE lines, `#` comments, optional quotes around the value."""
    values = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.removeprefix("export ").partition("=")
        if not sep or not re.fullmatch(_NAME, key.strip()):
            raise StackError(f"{path}:{number}: expected KEY=VALUE, got {line!r}")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[key.strip()] = value
    return values


def parse_duration(text: str | int | float | None, default: float) -> float:
    """A compose duration (`5s`, `1m30s`, `500ms`) in seconds."""
    if text is None:
        return default
    if isinstance(text, (int, float)):
        return float(text)
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise StackError(f"invalid duration {text!r}")
    scale = {"h": 3600, "m": 60, "s": 1, "ms": 1e-3, "us": 1e-6}
    return sum(float(n) * scale[u] for n, u in parts)


@dataclass
class Healthcheck:
    """A compose health check: the probe and its timing."""

    argv: list[str]
    interval: float
    timeout: float
    retries: int
    start_period: float

    @property
    def deadline(self) -> float:
        """How long compose waits before calling the service unhealthy."""
        return self.start_period + self.interval * self.retries + self.timeout


@dataclass
class Service:
    """One compose service as this stack runs it."""

    name: str
    command: list[str]
    environment: dict[str, str]
    depends_on: dict[str, str]  # service -> condition
    healthcheck: Healthcheck | None
    profiles: list[str]
    ports: list[int]  # published host ports


def _interpolate_tree(node: Any, variables: Mapping[str, str], where: str) -> Any:
    if isinstance(node, str):
        return interpolate(node, variables, where=where)
    if isinstance(node, list):
        return [_interpolate_tree(v, variables, where) for v in node]
    if isinstance(node, dict):
        return {k: _interpolate_tree(v, variables, f"{where}.{k}") for k, v in node.items()}
    return node


def _argv(command: str | list[str] | None, where: str) -> list[str]:
    if command is None:
        raise StackError(f"{where}: no command; a locally run service needs one in docker-compose.yml")
    return shlex.split(command) if isinstance(command, str) else [str(c) for c in command]


def _healthcheck(spec: dict | None, where: str) -> Healthcheck | None:
    if not spec or spec.get("disable"):
        return None
    test = spec["test"]
    if isinstance(test, str):
        argv = ["sh", "-c", test]
    elif test[0] == "CMD":
        argv = [str(t) for t in test[1:]]
    elif test[0] == "CMD-SHELL":
        argv = ["sh", "-c", " ".join(test[1:])]
    elif test[0] == "NONE":
        return None
    else:
        raise StackError(f"{where}.healthcheck.test: must start with CMD, CMD-SHELL or NONE")
    return Healthcheck(argv=argv, interval=parse_duration(spec.get("interval"), 30.0),
                       timeout=parse_duration(spec.get("timeout"), 30.0), retries=int(spec.get("retries", 3)),
                       start_period=parse_duration(spec.get("start_period"), 0.0))


def _environment(spec: dict | list | None) -> dict[str, str]:
    if isinstance(spec, list):  # ["KEY=value", ...]
        return dict(item.split("=", 1) if "=" in item else (item, "") for item in spec)
    return {k: "" if v is None else str(v) for k, v in (spec or {}).items()}


def _host_ports(ports: list | None) -> list[int]:
    out = []
    for port in ports or []:
        published = str(port).split(":")[-2] if ":" in str(port) else str(port)
        out.append(int(published.split("/")[0]))
    return out


def load_services(variables: Mapping[str, str], compose_file: Path = COMPOSE_FILE) -> dict[str, Service]:
    """The compose file's services with every `${VAR}` resolved against `variables`."""
    raw = yaml.safe_load(compose_file.read_text())
    services = {}
    for name, spec in raw["services"].items():
        where = f"services.{name}"
        spec = _interpolate_tree(spec, variables, where)
        depends = spec.get("depends_on") or {}
        if isinstance(depends, list):
            depends = {d: {"condition": "service_started"} for d in depends}
        services[name] = Service(
            name=name,
            command=_argv(spec.get("command"), where) if name not in STAND_INS else [],
            environment=_environment(spec.get("environment")),
            depends_on={d: (c or {}).get("condition", "service_started") for d, c in depends.items()},
            healthcheck=_healthcheck(spec.get("healthcheck"), where),
            profiles=list(spec.get("profiles") or []),
            ports=_host_ports(spec.get("ports")),
        )
    return services


def start_order(services: Mapping[str, Service]) -> list[str]:
    """Services in dependency order (compose's), stable by file order among equals."""
    order: list[str] = []
    visiting: set[str] = set()

    def visit(name: str) -> None:
        if name in order:
            return
        if name in visiting:
            raise StackError(f"services.{name}.depends_on: dependency cycle")
        visiting.add(name)
        for dependency in services[name].depends_on:
            if dependency not in services:
                raise StackError(f"services.{name}.depends_on: unknown service {dependency!r}")
            visit(dependency)
        visiting.discard(name)
        order.append(name)

    for name in services:
        visit(name)
    return order


# --- where the local stack differs from containers ---------------------------------------------

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


# --- state ----------------------------------------------------------------------------------------

@dataclass
class Running:
    name: str
    pid: int
    argv: list[str]
    log: str
    ports: list[int]


@dataclass
class State:
    """What `up` started: processes by service, the keys it created, the settings it used."""

    config: dict[str, Any]
    services: dict[str, Running] = field(default_factory=dict)
    keys: dict[str, str] = field(default_factory=dict)

    @staticmethod
    def path(config: StackConfig) -> Path:
        return config.state_dir / "state.json"

    def save(self, config: StackConfig) -> None:
        path = self.path(config)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2))
        os.chmod(tmp, 0o600)  # it holds API keys
        os.replace(tmp, path)

    def restore(self, config: StackConfig) -> StackConfig:
        """The configuration `up` ran with (env file, profiles, --set variables), for status and down."""
        return StackConfig(state_dir=config.state_dir, database=self.config["database"],
                           redis_db=self.config["redis_db"], env_file=Path(self.config["env_file"]),
                           profiles=tuple(self.config.get("profiles", ())), overrides=self.config.get("overrides", {}))

    @classmethod
    def load(cls, config: StackConfig) -> State | None:
        path = cls.path(config)
        if not path.is_file():
            return None
        raw = json.loads(path.read_text())
        return cls(config=raw["config"], services={k: Running(**v) for k, v in raw["services"].items()},
                   keys=raw.get("keys", {}))

    def url(self, service: str) -> str | None:
        running = self.services.get(service)
        return f"http://127.0.0.1:{running.ports[0]}" if running and running.ports else None


def alive(pid: int) -> bool:
    """True while the process exists and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return True


# --- stand-ins ------------------------------------------------------------------------------------

def _ensure_database(config: StackConfig) -> None:
    import psycopg

    try:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=5) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (config.database,)).fetchone()
            if not exists:
                conn.execute(f'CREATE DATABASE "{config.database}"')
    except psycopg.OperationalError as exc:
        raise StackError(f"postgres: the local PostgreSQL at 127.0.0.1:5432 is unreachable ({exc}); start it") from exc


def _drop_database(config: StackConfig) -> None:
    import psycopg

    with psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=5) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{config.database}" WITH (FORCE)')


def _redis(config: StackConfig):
    import redis

    return redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=config.redis_db, socket_timeout=5,
                       socket_connect_timeout=5)


def _check_stand_in(name: str, config: StackConfig) -> None:
    """Makes the stand-in of an image-only service ready, or says what is missing."""
    if name == "postgres":
        _ensure_database(config)
    elif name == "redis":
        import redis

        try:
            _redis(config).ping()
        except redis.RedisError as exc:
            raise StackError(f"redis: the local Redis at {REDIS_HOST}:{REDIS_PORT} is unreachable ({exc}); "
                             "start it") from exc
    elif name == "mlflow":
        (config.state_dir / "mlruns").mkdir(parents=True, exist_ok=True)


# --- processes --------------------------------------------------------------------------------

def _shim_dir(config: StackConfig) -> Path:
    """A `pops` on PATH for commands that call it (the package may not be pip-installed here)."""
    shim = config.state_dir / "bin"
    shim.mkdir(parents=True, exist_ok=True)
    pops = shim / "pops"
    pops.write_text(f"#!/bin/sh\nexec {shlex.quote(sys.executable)} -c "
                    "'import sys; from controlplane.cli import app; sys.argv[0] = \"pops\"; app()' \"$@\"\n")
    pops.chmod(0o755)
    return shim


def process_env(service: Service, config: StackConfig) -> dict[str, str]:
    """A service's environment: its compose `environment`, PATH to this Python, the repository importable."""
    env = {k: os.environ[k] for k in _BASE_ENV if k in os.environ}
    path = [str(_shim_dir(config)), str(Path(sys.executable).parent), os.environ.get("PATH", "/usr/bin:/bin")]
    env.update({"PATH": os.pathsep.join(path), "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"})
    env.update(service.environment)
    return env


def probe(service: Service, config: StackConfig) -> bool:
    """Runs the service's compose health check once, here; True when it passes."""
    check = service.healthcheck
    if check is None:
        return True
    try:
        result = subprocess.run(check.argv, cwd=REPO, env=process_env(service, config), stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=check.timeout)
    except (subprocess.TimeoutExpired, OSError):
        return False
    return result.returncode == 0


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _start(service: Service, config: StackConfig) -> Running:
    for port in service.ports:
        if not _port_free(port):
            raise StackError(f"{service.name}: port {port} on 127.0.0.1 is in use; set its port variable "
                             f"(e.g. --set POPS_API_PORT=...) or stop what listens there")
    logs = config.state_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    log = logs / f"{service.name}.log"
    with open(log, "ab") as out:
        process = subprocess.Popen(service.command, cwd=REPO, env=process_env(service, config), stdout=out,
                                   stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    return Running(name=service.name, pid=process.pid, argv=service.command, log=str(log), ports=service.ports)


def _wait_healthy(service: Service, running: Running, config: StackConfig) -> None:
    check = service.healthcheck
    deadline = time.monotonic() + (check.deadline if check else 5.0)
    while time.monotonic() < deadline:
        if not alive(running.pid):
            raise StackError(f"{service.name} exited during start-up ({_exit_status(running.pid)}); see "
                             f"{running.log}:\n{_tail(running.log)}")
        if check is None or probe(service, config):
            return
        time.sleep(min(1.0, check.interval))
    raise StackError(f"{service.name} did not become healthy within {check.deadline:.0f} s; see {running.log}:\n"
                     f"{_tail(running.log)}")


def _exit_status(pid: int) -> str:
    """How a child of this process ended (reaping it), or 'exited' when it is not our child."""
    try:
        _, status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return "exited"
    if os.WIFSIGNALED(status):
        return f"killed by signal {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exit code {os.WEXITSTATUS(status)}" if os.WIFEXITED(status) else "exited"


def _tail(path: str, lines: int = 15) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _stop(running: Running, timeout: float = 20.0) -> None:
    """SIGTERM to the service's process group (it started it as a session leader), SIGKILL after `timeout`."""
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(running.pid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and _group_alive(running.pid):
            _reap(running.pid)
            time.sleep(0.1)
        if not _group_alive(running.pid):
            break
    _reap(running.pid)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return alive(pgid) or any(_in_group(p, pgid) for p in _pids())


def _pids() -> list[int]:
    return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]


def _in_group(pid: int, pgid: int) -> bool:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()
    except (OSError, IndexError):
        return False
    return fields[0] != "Z" and int(fields[2]) == pgid


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass  # not our child (a previous `pops stack up` started it): init reaps it


def _create_key(api: Service, config: StackConfig, owner: str, role: str, reason: str) -> str:
    """`pops admin create-key` with the API's environment, as an operator would run it in the api container."""
    result = subprocess.run(["pops", "admin", "create-key", "--owner", owner, "--role", role, "--reason", reason],
                            cwd=REPO, env=process_env(api, config), capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        raise StackError(f"creating the {owner} key failed:\n{result.stderr[-2000:]}")
    return result.stdout.strip().splitlines()[-1]


# --- the commands -----------------------------------------------------------------------------

Report = Callable[[str], None]


def selected(services: Mapping[str, Service], profiles: tuple[str, ...]) -> list[str]:
    """Services compose would start: those without a profile, and those of an enabled profile."""
    return [n for n in start_order(services)
            if not services[n].profiles or set(services[n].profiles) & set(profiles)]


def up(config: StackConfig, report: Report = lambda _: None) -> State:
    """Starts every selected service in dependency order, each once its dependencies are healthy."""
    previous = State.load(config)
    if previous is not None and any(alive(r.pid) for r in previous.services.values()):
        raise StackError(f"the stack in {config.state_dir} is already up; `pops stack down` first")
    keys = dict(previous.keys) if previous else {}
    state = State(config={"database": config.database, "redis_db": config.redis_db,
                          "env_file": str(config.env_path()), "profiles": list(config.profiles),
                          "overrides": config.overrides}, keys=keys)
    services = load_services(variables_for(config, keys))
    try:
        for name in selected(services, config.profiles):
            if name in STAND_INS:
                _check_stand_in(name, config)
                report(f"{name}: {STAND_INS[name]} stands in")
                continue
            service = load_services(variables_for(config, state.keys))[name]  # keys made so far resolve
            running = _start(service, config)
            state.services[name] = running
            state.save(config)
            report(f"{name}: started (pid {running.pid}), waiting until healthy")
            _wait_healthy(service, running, config)
            report(f"{name}: healthy" + (f" at http://127.0.0.1:{running.ports[0]}" if running.ports else ""))
            if name == "api":
                try:
                    _bootstrap_keys(service, config, state, report)
                except StackError as exc:
                    raise StackError(f"{exc}\n--- {running.log}:\n{_tail(running.log, 30)}") from None
    except BaseException:
        for running in reversed(list(state.services.values())):
            _stop(running)
        state.services.clear()
        state.save(config)
        raise
    return state


def _bootstrap_keys(api: Service, config: StackConfig, state: State, report: Report) -> None:
    """Creates the keys the env file leaves empty, once per database (they are kept in the state file): the
    operator's admin key with `pops admin create-key`, the services' keys through the API with it."""
    import httpx

    configured = variables_for(config)
    missing = [v for v in SERVICE_KEYS if not configured.get(v) and not state.keys.get(v)]
    if not missing:
        return
    admin = configured.get(ADMIN_KEY) or state.keys.get(ADMIN_KEY)
    if not admin:
        owner, role, reason = SERVICE_KEYS[ADMIN_KEY]
        admin = state.keys[ADMIN_KEY] = _create_key(api, config, owner, role, f"local stack: {reason}")
        report(f"api: created the {role} key of {owner} ({ADMIN_KEY})")
    with httpx.Client(base_url=f"http://127.0.0.1:{api.ports[0]}/v1", timeout=30,
                      headers={"Authorization": f"Bearer {admin}"}) as client:
        for variable in [v for v in missing if v != ADMIN_KEY]:
            owner, role, reason = SERVICE_KEYS[variable]
            response = client.post("/api-keys", json={"owner": owner, "role": role, "reason": f"local stack: {reason}"})
            if response.status_code != 201:
                raise StackError(f"creating the {owner} key failed: {response.status_code} {response.text}")
            state.keys[variable] = response.json()["key"]
            report(f"api: created the {role} key of {owner} ({variable})")
    state.save(config)


@dataclass
class ServiceStatus:
    name: str
    state: str  # running, exited, stand-in
    health: str  # healthy, unhealthy, -
    pid: int | None
    url: str | None
    log: str | None


def status(config: StackConfig) -> list[ServiceStatus]:
    """Each service's process state and its health check, run now."""
    state = State.load(config)
    if state is None:
        raise StackError(f"no stack in {config.state_dir}; `pops stack up` starts one")
    config = state.restore(config)
    services = load_services(variables_for(config, state.keys))
    out = []
    for name in selected(services, tuple(state.config.get("profiles", ()))):
        if name in STAND_INS:
            try:
                _check_stand_in(name, config)
                health = "healthy"
            except StackError:
                health = "unhealthy"
            out.append(ServiceStatus(name, "stand-in", health, None, None, None))
            continue
        running = state.services.get(name)
        if running is None:
            out.append(ServiceStatus(name, "not started", "-", None, None, None))
            continue
        up_now = alive(running.pid)
        health = ("healthy" if probe(services[name], config) else "unhealthy") if up_now else "-"
        out.append(ServiceStatus(name, "running" if up_now else "exited", health, running.pid, state.url(name),
                                 running.log))
    return out


def down(config: StackConfig, *, volumes: bool = False, report: Report = lambda _: None) -> None:
    """Stops the stack's processes (newest first); `volumes` also drops its database, Redis db and state."""
    state = State.load(config)
    if state is not None:
        config = state.restore(config)
        for running in reversed(list(state.services.values())):
            if alive(running.pid):
                _stop(running)
                report(f"{running.name}: stopped (pid {running.pid})")
        state.services.clear()
        state.save(config)
    if volumes:
        _drop_database(config)
        _redis(config).flushdb()
        shutil.rmtree(config.state_dir, ignore_errors=True)
        report(f"dropped database {config.database}, flushed Redis db {config.redis_db}, removed {config.state_dir}")
