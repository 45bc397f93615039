"""`pops`: the runtime's commands plus the service's (`admin`, `api`, `db`)."""
from __future__ import annotations

import getpass
from typing import Annotated, Optional

import typer

from runtime.cli import app as runtime_app

app = typer.Typer(help="PrecisionOps: precision recipes, engines and their rollout.", no_args_is_help=True,
                  pretty_exceptions_enable=False)
# Every runtime command and group (`plan`, `build`, `corpus ...`) is a `pops` command too.
app.registered_commands.extend(runtime_app.registered_commands)
app.registered_groups.extend(runtime_app.registered_groups)

admin_app = typer.Typer(help="Administration: API keys.", no_args_is_help=True)
db_app = typer.Typer(help="The control-plane database.", no_args_is_help=True)
app.add_typer(admin_app, name="admin")
app.add_typer(db_app, name="db")


def _settings():
    from controlplane.settings import get_settings

    return get_settings()


@admin_app.command("create-key")
def create_key(
    owner: Annotated[str, typer.Option(help="Who holds the key; named in every audit event it causes.")],
    role: Annotated[str, typer.Option(help="viewer, submitter, approver or admin.")] = "admin",
    description: Annotated[Optional[str], typer.Option(help="What the key is for.")] = None,
    reason: Annotated[Optional[str], typer.Option(help="Why it is issued (audited).")] = None,
) -> None:
    """Creates an API key and prints it once (the database keeps only a hash)."""
    from pydantic import ValidationError

    from controlplane.auth import service
    from controlplane.auth.schemas import ApiKeyCreate
    from controlplane.db import make_session_factory, get_engine

    settings = _settings()
    try:
        key_in = ApiKeyCreate(owner=owner, role=role, description=description, reason=reason)
    except ValidationError as exc:
        for error in exc.errors(include_url=False):
            typer.echo(f"error: --{'.'.join(map(str, error['loc']))}: {error['msg']}", err=True)
        raise typer.Exit(2) from None
    with make_session_factory(get_engine(settings))() as db:
        key, plaintext = service.create(db=db, key_in=key_in, pepper=settings.api_key_pepper.get_secret_value(),
                                        actor=f"cli:{getpass.getuser()}")
    typer.echo(f"created key {key.prefix} for {key.owner} ({key.role.value}); store it now, it is not shown again:",
               err=True)
    typer.echo(plaintext)


@db_app.command("upgrade")
def db_upgrade(revision: Annotated[str, typer.Argument(help="Target revision.")] = "head") -> None:
    """Migrates the database to `revision` and syncs accelerator profiles from the runtime."""
    from controlplane import migrate
    from controlplane.accelerators import service as accelerators
    from controlplane.db import get_engine, make_session_factory

    settings = _settings()
    migrate.upgrade(settings, revision)
    if revision == "head":
        with make_session_factory(get_engine(settings))() as db:
            result = accelerators.sync_from_runtime(db=db, actor=f"cli:{getpass.getuser()}")
        typer.echo(f"synced {result.accelerators} accelerators, {result.entries} compatibility entries", err=True)


@db_app.command("downgrade")
def db_downgrade(revision: Annotated[str, typer.Argument(help="Target revision (`base` drops everything).")]) -> None:
    """Migrates the database down to `revision`."""
    from controlplane import migrate

    migrate.downgrade(_settings(), revision)


@app.command("api")
def api(
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 8000,
    workers: Annotated[int, typer.Option(help="Worker processes.")] = 1,
) -> None:
    """Serves the REST API (`/v1`, OpenAPI at /docs) with uvicorn."""
    import uvicorn

    uvicorn.run("controlplane.main:app", host=host, port=port, workers=workers, proxy_headers=True,
                log_level=_settings().log_level.lower())


@app.command("worker")
def worker(
    queues: Annotated[str, typer.Option("--queues", "-Q", help="Queues to consume, comma-separated: cpu, gpu.")] = "cpu,gpu",
    concurrency: Annotated[int, typer.Option(help="Jobs at once; each loads a model, so keep it small.")] = 1,
    pool: Annotated[str, typer.Option(help="prefork (each job in a child process) or solo.")] = "prefork",
    loglevel: Annotated[str, typer.Option(help="DEBUG, INFO, WARNING or ERROR.")] = "INFO",
) -> None:
    """Runs a Celery worker for calibrate / build / evaluate jobs (needs POPS_BROKER_URL).

    The same as `celery -A controlplane.celery_app worker -Q cpu,gpu`; a host without a GPU
    consumes `-Q cpu` only.
    """
    from controlplane.celery_app import QUEUES, get_celery

    settings = _settings()
    if settings.broker_url is None:
        typer.echo("error: POPS_BROKER_URL is not set; without a broker, jobs run inside the API process "
                   "and no worker is needed", err=True)
        raise typer.Exit(2)
    unknown = sorted(set(queues.split(",")) - set(QUEUES))
    if unknown:
        typer.echo(f"error: --queues: unknown queue(s) {', '.join(unknown)}; known: {', '.join(QUEUES)}", err=True)
        raise typer.Exit(2)
    get_celery(settings).worker_main(
        ["worker", "-Q", queues, "--concurrency", str(concurrency), "--pool", pool, "--loglevel", loglevel]
    )
