"""The FastAPI app: `controlplane.main:app`, or `create_app(settings)` for a configured one."""
from __future__ import annotations

import importlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from sqlalchemy.exc import SQLAlchemyError
from starlette.concurrency import run_in_threadpool

from controlplane.db import create_db_engine, make_session_factory
from controlplane.errors import install_error_handlers
from controlplane.settings import Settings, get_settings

log = logging.getLogger(__name__)

API_PREFIX = "/v1"

# Each module exposes `router`; all are mounted under /v1.
ROUTERS = [
    "controlplane.auth.router",
    "controlplane.model_registry.router",
    "controlplane.recipes.router",
    "controlplane.corpora.router",
    "controlplane.accelerators.router",
    "controlplane.calibrations.router",
    "controlplane.engines.router",
    "controlplane.evaluations.router",
    "controlplane.deployments.router",
    "controlplane.canary.router",
    "controlplane.alerts.router",
    "controlplane.audit.router",
    "controlplane.jobs.router",
    "controlplane.drift.router",
]


def _seed_accelerators(app: FastAPI) -> None:
    from controlplane.accelerators import service as accelerators

    try:
        with app.state.session_factory() as db:
            accelerators.sync_from_runtime(db=db)
    except SQLAlchemyError as exc:
        log.error("accelerator profiles not synced (%s); is the database migrated? run `pops db upgrade`",
                  type(exc).__name__)


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    if app.state.settings.seed_accelerators:
        await run_in_threadpool(_seed_accelerators, app)
    yield
    app.state.engine.dispose()


def create_app(settings: Settings | None = None) -> FastAPI:
    """Builds the app for `settings`: its own engine and sessions, the /v1 routers, the error handler."""
    settings = settings or get_settings()
    logging.getLogger("controlplane").setLevel(settings.log_level)
    app = FastAPI(
        title="PrecisionOps control plane",
        version="0.1.0",
        description="Recipes, corpora, engines, evaluations, deployments and canary samples for mixed-precision "
                    "LLM inference. Authenticate with `Authorization: Bearer <key>` or `X-API-Key`.",
        lifespan=_lifespan,
    )
    app.state.settings = settings
    app.state.engine = create_db_engine(settings)
    app.state.session_factory = make_session_factory(app.state.engine)
    install_error_handlers(app)

    @app.get(f"{API_PREFIX}/health", tags=["health"])
    def health() -> JSONResponse:
        """Liveness and database reachability; needs no key."""
        try:
            # A raw pooled connection: no transaction, so no SQLite write lock to wait for (and pre-ping applies).
            connection = app.state.engine.raw_connection()
            try:
                cursor = connection.cursor()
                cursor.execute("SELECT 1")
                cursor.close()
            finally:
                connection.close()
        except Exception:  # noqa: BLE001 (any driver error means the database is not usable)
            return JSONResponse({"status": "degraded", "database": "unreachable"}, status_code=503)
        return JSONResponse({"status": "ok", "database": "ok"})

    for module in ROUTERS:
        app.include_router(importlib.import_module(module).router, prefix=API_PREFIX)
    return app


def __getattr__(name: str) -> FastAPI:
    # `controlplane.main:app` is built on first access, from the environment's settings.
    if name == "app":
        globals()["app"] = create_app()
        return globals()["app"]
    raise AttributeError(name)
