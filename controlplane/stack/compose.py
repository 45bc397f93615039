"""docker-compose.yml as the local stack reads it: compose's `${VAR}` interpolation, services, health checks, order."""
from __future__ import annotations

import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker-compose.yml"
# Services that run from third-party images; here, what stands in for them.
STAND_INS = {
    "postgres": "local PostgreSQL at 127.0.0.1:5432",
    "redis": "local Redis at 127.0.0.1:6379",
    "mlflow": "an MLflow file store in the state folder",
}


class StackError(Exception):
    """The stack could not be brought up, read or taken down; the message says why and what to do."""


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


def selected(services: Mapping[str, Service], profiles: tuple[str, ...]) -> list[str]:
    """Services compose would start: those without a profile, and those of an enabled profile."""
    return [n for n in start_order(services)
            if not services[n].profiles or set(services[n].profiles) & set(profiles)]
