"""docker-compose.yml, proved without Docker: its commands, environments and health checks run as local processes.

The fast tests read the file; the `services` test brings the stack up against the local PostgreSQL
(a database of its own) and Redis (a db number of its own), runs the full demo through it, then
takes it down.
"""
from __future__ import annotations

import os
import re
import uuid
from pathlib import Path

import httpx
import psycopg
import pytest
import yaml
from rich.console import Console

from controlplane import demo, stack
from controlplane.stack import REPO, StackConfig, StackError, interpolate, load_services, selected
from tests.controlplane.databases import service_unavailable

COMPOSE = yaml.safe_load((REPO / "docker-compose.yml").read_text())
EXAMPLE = stack.read_env_file(REPO / ".env.example")


@pytest.mark.parametrize("text, variables, expected", [
    ("plain", {}, "plain"),
    ("$$HOME and $${X}", {"HOME": "/root"}, "$HOME and ${X}"),
    ("${A}-$A", {"A": "x"}, "x-x"),
    ("${A:-fallback}", {"A": ""}, "fallback"),
    ("${A-fallback}", {"A": ""}, ""),
    ("${A-fallback}", {}, "fallback"),
    ("${A:-${B:-deep}}", {}, "deep"),
    ("postgresql://${U:-pops}:${P:?no}@db", {"P": "s3cret"}, "postgresql://pops:s3cret@db"),
    ("${A:+set}", {"A": "1"}, "set"),
    ("${A:+set}", {"A": ""}, ""),
    ('${R:-["/a", "/b"]}', {}, '["/a", "/b"]'),
])
def test_interpolation_follows_compose(text, variables, expected):
    assert interpolate(text, variables) == expected


def test_a_required_variable_names_itself_and_the_fix():
    with pytest.raises(StackError, match=r"services.api.x: PEPPER is required: set PEPPER in .env"):
        interpolate("${PEPPER:?set PEPPER in .env}", {}, where="services.api.x")
    with pytest.raises(StackError, match="unterminated"):
        interpolate("${OPEN", {})


def test_compose_declares_the_production_stack():
    services = COMPOSE["services"]
    assert set(services) == {"postgres", "redis", "mlflow", "api", "worker", "gpu-worker", "serve", "dashboard"}
    assert all("healthcheck" in spec for spec in services.values())
    volumes = set(COMPOSE["volumes"])
    for name, spec in services.items():  # every volume a service mounts is a named, declared one
        for mount in spec.get("volumes", []):
            assert mount.split(":")[0] in volumes, (name, mount)
    assert "pops db upgrade &&" in " ".join(services["api"]["command"])  # migrations before uvicorn
    assert services["api"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["worker"]["command"][services["worker"]["command"].index("-Q") + 1] == "cpu"
    gpu = services["gpu-worker"]
    assert gpu["profiles"] == ["gpu"] and gpu["command"][gpu["command"].index("-Q") + 1] == "gpu"
    device = gpu["deploy"]["resources"]["reservations"]["devices"][0]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]


def test_env_example_documents_every_variable_and_sets_the_required_ones():
    text = yaml.safe_dump(COMPOSE)  # the values, not the comments
    referenced = set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)", text))
    documented = set(EXAMPLE) | set(re.findall(r"^# ?([A-Z_]+)=", (REPO / ".env.example").read_text(), re.M))
    assert referenced - documented - {"POPS_IMAGE", "POPS_API_HOST", "POPS_BIND_HOST"} == set()
    required = set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*):\?", text))
    assert required and all(EXAMPLE.get(name) for name in required)
    services = load_services(EXAMPLE)  # the example alone resolves the whole file
    assert services["api"].environment["POPS_DATABASE_URL"] == (
        f"postgresql+psycopg://pops:{EXAMPLE['POSTGRES_PASSWORD']}@postgres:5432/pops")
    assert services["serve"].command[services["serve"].command.index("--control-plane") + 1] == "http://api:8000"


def test_locally_the_same_commands_point_at_the_stand_ins(tmp_path):
    config = StackConfig(state_dir=tmp_path, database="pops_stack_unit", redis_db=11,
                         overrides={"POPS_API_PORT": "18123"})
    services = load_services(stack.variables_for(config))
    assert selected(services, ()) == ["postgres", "redis", "mlflow", "api", "worker", "serve", "dashboard"]
    assert "gpu-worker" in selected(services, ("gpu",))
    env = services["worker"].environment
    assert env["POPS_DATABASE_URL"] == "postgresql+psycopg://postgres@127.0.0.1:5432/pops_stack_unit"
    assert env["POPS_BROKER_URL"] == "redis://127.0.0.1:6379/11"
    assert env["POPS_MLFLOW_TRACKING_URI"] == (tmp_path / "mlruns").as_uri()
    assert services["api"].ports == [18123] and "--port 18123" in services["api"].command[-1]
    assert services["dashboard"].environment["POPS_DASHBOARD_API_URL"] == "http://127.0.0.1:18123"
    assert services["api"].healthcheck.argv[-1].endswith("urlopen('http://127.0.0.1:18123/v1/health', timeout=3)")


def test_health_probes_never_expose_a_half_written_pops_shim(tmp_path):
    """Services start through the `pops` shim that `/bin/sh` reads as it starts, while `up` goes on probing health
    (each probe builds the environment). A shim rewritten in place reads empty for a moment: sh then runs nothing
    and exits 0, and the service dies in start-up with an empty log."""
    import threading

    config = StackConfig(state_dir=tmp_path, database="pops_stack_unit", redis_db=11)
    service = load_services(stack.variables_for(config))["serve"]
    shim = Path(stack.processes.process_env(service, config)["PATH"].split(os.pathsep)[0]) / "pops"
    script = shim.read_text()
    assert script.startswith("#!/bin/sh\nexec ") and os.access(shim, os.X_OK)
    stop = threading.Event()

    def probe_often():
        while not stop.is_set():
            stack.processes.process_env(service, config)

    prober = threading.Thread(target=probe_often)
    prober.start()
    try:
        reads = [shim.read_text() for _ in range(20_000)]
    finally:
        stop.set()
        prober.join()
    assert all(r == script for r in reads), f"{sum(r != script for r in reads)} of {len(reads)} reads differed"


@pytest.mark.parametrize("script, how", [("echo starting; exit 3", "exit code 3"),
                                         ("echo starting; kill -KILL $$", "killed by signal SIGKILL")])
def test_a_service_that_dies_in_start_up_says_how_and_shows_its_log(tmp_path, script, how):
    from controlplane.stack.compose import Healthcheck, Service

    config = StackConfig(state_dir=tmp_path, database="pops_stack_unit", redis_db=11)
    check = Healthcheck(argv=["false"], interval=0.2, timeout=5, retries=50, start_period=0)
    service = Service(name="doomed", command=["sh", "-c", f"sleep 0.5; {script}"], environment={}, depends_on={},
                      healthcheck=check, profiles=[], ports=[])
    running = stack.processes._start(service, config)
    with pytest.raises(StackError, match=rf"doomed exited during start-up \({how}\); see .*doomed.log:\nstarting"):
        stack.processes._wait_healthy(service, running, config)  # the failing probes' subprocesses reap nothing


@pytest.fixture
def redis_db(redis_url) -> int:
    """An empty Redis db claimed for this test (the jobs tests' protocol): two stacks on one db would share a
    broker, and each one's worker would take the other's jobs."""
    import redis

    token = uuid.uuid4().hex
    for db in range(15, 0, -1):
        client = redis.Redis(host=stack.REDIS_HOST, port=stack.REDIS_PORT, db=db)
        if client.dbsize() == 0 and client.set("pops-tests:claim", token, nx=True, ex=3600):
            break
        client.close()
    else:
        pytest.fail("no free Redis database (1-15) to claim for the stack test")
    yield db
    if client.get("pops-tests:claim") == token.encode():  # `down --volumes` flushed it already when it ran
        client.flushdb()
    client.close()


def _free_ports(n: int) -> list[int]:
    import socket

    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


@pytest.mark.services
@pytest.mark.slow
def test_stack_up_runs_compose_as_processes_and_the_demo_runs_through_it(tmp_path, redis_db):
    try:
        psycopg.connect(stack.PG_ADMIN_URL, connect_timeout=3).close()
    except psycopg.OperationalError as exc:
        service_unavailable("PostgreSQL at 127.0.0.1:5432", exc)
    api_port, serve_port, dashboard_port = _free_ports(3)
    config = StackConfig(state_dir=tmp_path / "stack", database=f"pops_stack_{uuid.uuid4().hex[:10]}",
                         redis_db=redis_db,
                         overrides={"POPS_API_PORT": str(api_port), "POPS_SERVE_PORT": str(serve_port),
                                    "POPS_DASHBOARD_PORT": str(dashboard_port), "POPS_API_WORKERS": "1",
                                    "POPS_SERVE_SAMPLE_SHARE": "1", "POPS_SERVE_CANARY_SAMPLE_SHARE": "1",
                                    "POPS_SERVE_POLL_INTERVAL": "1"})
    lines: list[str] = []
    state = None
    try:
        state = stack.up(config, report=lines.append)
        assert set(state.services) == {"api", "worker", "serve", "dashboard"}
        assert {r.name: r.health for r in stack.status(config)} == {
            name: "healthy" for name in ("postgres", "redis", "mlflow", "api", "worker", "serve", "dashboard")}
        with pytest.raises(StackError, match="already up"):
            stack.up(config)
        assert httpx.get(f"http://127.0.0.1:{dashboard_port}/_stcore/health", timeout=10).text == "ok"
        with psycopg.connect(f"postgresql://postgres@127.0.0.1:5432/{config.database}") as conn:
            assert conn.execute("SELECT count(*) FROM accelerators").fetchone()[0] > 0  # the api ran the migrations

        # The demo through the stack: jobs go through Redis to the worker, traffic through `pops serve`.
        story = demo.DemoConfig(home=tmp_path / "demo", calibration_samples=16, eval_samples=8, eval_seq_len=96,
                                shadow_requests=16, canary_requests=20, min_samples=12, drift_requests=40,
                                recipes=("fp8_w8a8_static",))
        summary = demo.run_demo(story, demo.stack_target(config.state_dir), Console(stderr=True, force_terminal=False))
        api = httpx.Client(base_url=f"http://127.0.0.1:{api_port}/v1", timeout=30,
                           headers={"Authorization": f"Bearer {state.keys['POPS_STACK_ADMIN_KEY']}"})
        jobs = api.get("/jobs", params={"limit": 500}).json()["data"]
        assert jobs and {j["queue"] for j in jobs} == {"cpu"} and all(j["status"] == "succeeded" for j in jobs)
        assert all(j["celery_task_id"] and j["attempts"] == 1 for j in jobs)
        assert api.get(f"/deployments/{summary['rollout_deployment']}").json()["stage"] == "rolled_back"
        assert summary["alert"]["evidence"]["action"] == "rolled_back"
        assert "stack-serve" in {e["actor"] for e in api.get("/audit-events", params={
            "action": "canary.ingest", "limit": 500}).json()["data"]}  # serving posted with the stack's key
    finally:
        stack.down(config, volumes=True, report=lines.append)
    assert state is not None and not any(stack.alive(r.pid) for r in state.services.values())
    with psycopg.connect("postgresql://postgres@127.0.0.1:5432/test") as conn:
        assert conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (config.database,)).fetchone() is None
    assert not config.state_dir.exists()
