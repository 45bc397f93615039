"""Where the story runs: the embedded default in this process, a local process stack, or any deployment."""
from __future__ import annotations

import json
import shutil
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from controlplane.demo.config import REPO, DemoConfig, DemoError

# The drift phase needs most requests shadowed: a production-like 1% would take thousands of requests.
MIN_SAMPLE_SHARE = 0.5


class Api:
    """The control plane's /v1 as the demo uses it; errors carry the server's detail."""

    def __init__(self, url: str, key: str, timeout_s: float):
        self.url = url.rstrip("/")
        self.http = httpx.Client(base_url=f"{self.url}/v1", headers={"Authorization": f"Bearer {key}"},
                                 timeout=timeout_s)

    def call(self, method: str, path: str, **kwargs) -> Any:
        response = self.http.request(method, path, **kwargs)
        if response.status_code >= 400:
            raise DemoError(f"{method} {path}: {response.status_code} {response.text[:500]}")
        return response.json()

    def all(self, path: str, **params) -> list[dict]:
        rows, offset = [], 0
        while True:
            page = self.call("GET", path, params={**params, "limit": 500, "offset": offset})
            rows += page["data"]
            offset += len(page["data"])
            if not page["data"] or offset >= page["count"]:
                return rows

    def as_key(self, key: str) -> Api:
        return Api(self.url, key, self.http.timeout.read or 60.0)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait(predicate: Callable[[], Any], *, timeout: float, what: str, interval: float = 0.5,
         error: type[Exception] = DemoError) -> Any:
    """Polls until `predicate()` is truthy and returns it; raises `error` naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise error(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


class _Server:
    """An ASGI app under uvicorn in a thread of this process."""

    def __init__(self, app, name: str):
        import uvicorn

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self._thread = threading.Thread(target=self._server.run, name=name, daemon=True)

    def __enter__(self) -> _Server:
        self._thread.start()
        wait(lambda: self._server.started, timeout=120, what=f"{self._thread.name} to listen", interval=0.05)
        return self

    def __exit__(self, *exc) -> None:
        self._server.should_exit = True
        self._thread.join(60)


@dataclass
class Target:
    """Where the story runs: the control plane, serving, an admin key, and how to look afterwards."""

    api_url: str
    serve_url: str | None
    admin_key: str
    look: list[str] = field(default_factory=list)  # commands that bring the dashboard up afterwards


@contextmanager
def embedded(config: DemoConfig) -> Iterator[Target]:
    """The embedded default in this process: the API on SQLite (jobs in-process) and `pops serve` following it."""
    from controlplane import migrate
    from controlplane.auth import service as auth
    from controlplane.auth.schemas import ApiKeyCreate
    from controlplane.db import create_db_engine, make_session_factory
    from controlplane.main import create_app
    from controlplane.settings import Settings
    from runtime.serving import ServeConfig
    from runtime.serving import create_app as create_serving

    home = config.home.resolve()
    for stale in ("pops.db", "artifacts", "mlruns", "report"):  # every run tells the story from the start
        path = home / stale
        shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
    home.mkdir(parents=True, exist_ok=True)
    env = {"POPS_DATABASE_URL": f"sqlite:///{home / 'pops.db'}", "POPS_ARTIFACT_ROOT": str(home / "artifacts"),
           "POPS_MLFLOW_TRACKING_URI": (home / "mlruns").as_uri(),
           "POPS_MODELS_ROOTS": json.dumps([str(REPO / "assets" / "models")]),
           "POPS_CANARY_WINDOW_SECONDS": str(config.canary_window_seconds)}
    settings = Settings(database_url=env["POPS_DATABASE_URL"], artifact_root=home / "artifacts",
                        mlflow_tracking_uri=env["POPS_MLFLOW_TRACKING_URI"], models_roots=[REPO / "assets" / "models"],
                        canary_window_seconds=config.canary_window_seconds)
    migrate.upgrade(settings)
    engine = create_db_engine(settings)
    with make_session_factory(engine)() as db:
        pepper = settings.api_key_pepper.get_secret_value()
        _, admin = auth.create(db=db, key_in=ApiKeyCreate(owner="demo-admin", role="admin", reason="the demo"),
                               pepper=pepper, actor="demo")
    engine.dispose()
    with _Server(create_app(settings), "control-plane") as api:
        serve_key = Api(api.url, admin, 60).call("POST", "/api-keys", json={
            "owner": "demo-serve", "role": "submitter", "reason": "serving posts canary samples"})["key"]
        serving = ServeConfig(endpoint="chat", control_plane_url=api.url, api_key=serve_key, sample_share=1.0,
                              canary_sample_share=1.0, poll_interval_s=1.0, flush_interval_s=1.0)
        with _Server(create_serving(serving), "serving") as serve:
            (home / "demo.env").write_text("".join(f"{k}='{v}'\n" for k, v in env.items()))
            yield Target(api_url=api.url, serve_url=serve.url, admin_key=admin, look=[
                f"set -a; . {home / 'demo.env'}; set +a; pops api --port 8000 &",
                "POPS_DASHBOARD_API_URL=http://127.0.0.1:8000 POPS_DASHBOARD_API_KEY={viewer_key} "
                "streamlit run dashboard/app.py"])


def stack_target(state_dir: Path | None) -> Target:
    """A running local process stack (`pops stack up`): its API, serving and admin key."""
    from controlplane.stack import DEFAULT_STATE_DIR, StackConfig, State, variables_for

    config = StackConfig(state_dir=state_dir or DEFAULT_STATE_DIR)
    state = State.load(config)
    if state is None or "api" not in state.services:
        raise DemoError(f"no stack in {config.state_dir}; start one with `pops stack up`")
    admin = state.keys.get("POPS_STACK_ADMIN_KEY")
    if not admin:
        raise DemoError("the stack's state has no admin key (POPS_STACK_ADMIN_KEY was set in its env file); "
                        "pass --api-url, --serve-url and --api-key instead")
    variables = variables_for(state.restore(config), state.keys)
    shares = {k: float(variables.get(k) or 0) for k in ("POPS_SERVE_SAMPLE_SHARE", "POPS_SERVE_CANARY_SAMPLE_SHARE")}
    if min(shares.values()) < MIN_SAMPLE_SHARE:
        raise DemoError(f"the stack's serving re-runs too few requests for the demo ({shares}); restart it with "
                        "`pops stack down && pops stack up --set POPS_SERVE_SAMPLE_SHARE=1 "
                        "--set POPS_SERVE_CANARY_SAMPLE_SHARE=1`")
    return Target(api_url=state.url("api"), serve_url=state.url("serve"), admin_key=admin,
                  look=[f"open {state.url('dashboard')} (the stack's dashboard; paste an approver key to act)"])
