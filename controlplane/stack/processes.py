"""The stack's processes: start each compose service here, wait for its health check, create the keys the
services need, report status, and stop them (only the process groups this stack started)."""
from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from controlplane.stack.compose import REPO, STAND_INS, Service, StackError, load_services, selected
from controlplane.stack.local import (
    StackConfig,
    check_stand_in,
    drop_database,
    redis_client,
    variables_for,
)

# Keys the services need, created once the API has migrated the database.
ADMIN_KEY = "POPS_STACK_ADMIN_KEY"
SERVICE_KEYS = {
    "POPS_SERVE_API_KEY": ("stack-serve", "submitter", "serving posts canary samples"),
    "POPS_DASHBOARD_API_KEY": ("stack-dashboard", "viewer", "the dashboard's default key"),
    ADMIN_KEY: ("stack-admin", "admin", "the operator of the local stack"),
}
# Only these reach a service besides its compose `environment`: a container inherits nothing either.
_BASE_ENV = ("HOME", "LANG", "LC_ALL", "TMPDIR", "TZ", "USER", "HF_HOME", "TORCH_HOME")


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


# The processes this one started, kept so that their exit status is ours to read: a dropped Popen is reaped
# by the next subprocess call (a health probe), and how it ended would be lost.
_children: dict[int, subprocess.Popen] = {}


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


# --- processes --------------------------------------------------------------------------------

def _shim_dir(config: StackConfig) -> Path:
    """A `pops` on PATH for commands that call it (the package may not be pip-installed here)."""
    shim = config.state_dir / "bin"
    shim.mkdir(parents=True, exist_ok=True)
    pops = shim / "pops"
    script = (f"#!/bin/sh\nexec {shlex.quote(sys.executable)} -c "
              "'import sys; from controlplane.cli import app; sys.argv[0] = \"pops\"; app()' \"$@\"\n")
    try:
        if pops.read_text() == script:
            return shim
    except OSError:
        pass
    # Replaced whole, never rewritten in place: a service's /bin/sh may be reading it right now, and an
    # empty read would make that service exit 0 in start-up with nothing in its log.
    tmp = shim / f".pops.{os.getpid()}.tmp"
    tmp.write_text(script)
    tmp.chmod(0o755)
    os.replace(tmp, pops)
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
    _children[process.pid] = process
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
    """How a process this one started ended (reaping it), or 'exited' when another `pops stack up` started it."""
    process = _children.pop(pid, None)
    if process is None or process.poll() is None:
        return "exited"
    if process.returncode < 0:
        return f"killed by signal {signal.Signals(-process.returncode).name}"
    return f"exit code {process.returncode}"


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
    process = _children.get(pid)
    if process is not None and process.poll() is not None:
        del _children[pid]
    # Not our child otherwise (a previous `pops stack up` started it): init reaps it.


def _create_key(api: Service, config: StackConfig, owner: str, role: str, reason: str) -> str:
    """`pops admin create-key` with the API's environment, as an operator would run it in the api container."""
    result = subprocess.run(["pops", "admin", "create-key", "--owner", owner, "--role", role, "--reason", reason],
                            cwd=REPO, env=process_env(api, config), capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        raise StackError(f"creating the {owner} key failed:\n{result.stderr[-2000:]}")
    return result.stdout.strip().splitlines()[-1]


# --- the commands -----------------------------------------------------------------------------

Report = Callable[[str], None]


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
                check_stand_in(name, config)
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
                check_stand_in(name, config)
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
        drop_database(config)
        redis_client(config).flushdb()
        shutil.rmtree(config.state_dir, ignore_errors=True)
        report(f"dropped database {config.database}, flushed Redis db {config.redis_db}, removed {config.state_dir}")
