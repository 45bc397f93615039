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
    """Runs a Celery worker for calibrate / build / evaluate / search jobs (needs POPS_BROKER_URL).

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


# --- the local process stack (docker-compose.yml without Docker) ----------------------------------
stack_app = typer.Typer(help="docker-compose.yml's services as local processes (no Docker needed).",
                        no_args_is_help=True)
app.add_typer(stack_app, name="stack")

StateDirOpt = Annotated[Optional[str], typer.Option("--state-dir", help="Where the stack keeps logs, keys, artifacts.")]
DatabaseOpt = Annotated[str, typer.Option(help="Local PostgreSQL database the stack uses (created if missing).")]
RedisDbOpt = Annotated[int, typer.Option(help="Local Redis db number the stack uses.")]


def _stack_config(state_dir: Optional[str], database: str, redis_db: int, env_file: Optional[str] = None,
                  profiles: Optional[list[str]] = None, assignments: Optional[list[str]] = None):
    from controlplane.stack import DEFAULT_STATE_DIR, StackConfig, StackError

    overrides = {}
    for item in assignments or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            typer.echo(f"error: --set: expected VAR=value, got {item!r}", err=True)
            raise typer.Exit(2)
        overrides[key] = value
    try:
        return StackConfig(state_dir=state_dir or DEFAULT_STATE_DIR, database=database, redis_db=redis_db,
                           env_file=env_file, profiles=tuple(profiles or ()), overrides=overrides)
    except StackError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


@stack_app.command("up")
def stack_up(
    state_dir: StateDirOpt = None,
    database: DatabaseOpt = "pops_stack",
    redis_db: RedisDbOpt = 7,
    env_file: Annotated[Optional[str], typer.Option(help="Variables for docker-compose.yml (default: .env, "
                                                          "else .env.example).")] = None,
    profile: Annotated[Optional[list[str]], typer.Option(help="Compose profiles to enable (e.g. gpu).")] = None,
    assignments: Annotated[Optional[list[str]], typer.Option(
        "--set", help="VAR=value for docker-compose.yml's interpolation (repeatable), e.g. POPS_API_PORT=8100.")] = None,
) -> None:
    """Starts api, worker, serve and dashboard from docker-compose.yml, each once its dependencies are healthy."""
    from controlplane import stack

    config = _stack_config(state_dir, database, redis_db, env_file, profile, assignments)
    try:
        state = stack.up(config, report=lambda line: typer.echo(line, err=True))
    except stack.StackError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    admin = state.keys.get("POPS_STACK_ADMIN_KEY")
    typer.echo(f"the stack is up; state in {config.state_dir}", err=True)
    for name in state.services:
        if state.url(name):
            typer.echo(f"  {name}: {state.url(name)}", err=True)
    if admin:
        typer.echo(f"  admin key (also in {stack.State.path(config)}): {admin}", err=True)


@stack_app.command("status")
def stack_status(state_dir: StateDirOpt = None, database: DatabaseOpt = "pops_stack",
                 redis_db: RedisDbOpt = 7) -> None:
    """Each service's process and health check; exits 1 unless all are healthy."""
    from rich.console import Console
    from rich.table import Table

    from controlplane import stack

    config = _stack_config(state_dir, database, redis_db)
    try:
        rows = stack.status(config)
    except stack.StackError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    table = Table(title=f"stack in {config.state_dir}")
    for column in ("service", "state", "health", "pid", "url", "log"):
        table.add_column(column)
    for r in rows:
        table.add_row(r.name, r.state, r.health, str(r.pid or ""), r.url or "", r.log or "")
    Console(width=200).print(table)
    if any(r.health != "healthy" for r in rows):
        raise typer.Exit(1)


@stack_app.command("down")
def stack_down(
    state_dir: StateDirOpt = None,
    database: DatabaseOpt = "pops_stack",
    redis_db: RedisDbOpt = 7,
    volumes: Annotated[bool, typer.Option("--volumes", "-v", help="Also drop the database, flush the Redis db and "
                                                                   "remove the state folder.")] = False,
) -> None:
    """Stops the stack's processes (like `docker compose down`)."""
    from controlplane import stack

    config = _stack_config(state_dir, database, redis_db)
    stack.down(config, volumes=volumes, report=lambda line: typer.echo(line, err=True))


# --- the full-story demo ----------------------------------------------------------------------------
@app.command("demo-stack")
def demo_stack(
    home: Annotated[str, typer.Option(help="Where the embedded run keeps its database, engines and report.")]
    = ".pops/demo-full",
    stack: Annotated[bool, typer.Option("--stack", help="Run through the local process stack (`pops stack up`).")]
    = False,
    state_dir: StateDirOpt = None,
    api_url: Annotated[Optional[str], typer.Option(help="Run through this control plane instead.")] = None,
    serve_url: Annotated[Optional[str], typer.Option(help="...and this `pops serve` (following --api-url).")] = None,
    api_key: Annotated[Optional[str], typer.Option(envvar="POPS_DEMO_API_KEY", help="Admin key for --api-url.")]
    = None,
    drift_requests: Annotated[int, typer.Option(help="Most long multiscript requests sent to cause drift.")] = 48,
    as_json: Annotated[bool, typer.Option("--json", help="The report's summary as JSON on stdout.")] = False,
) -> None:
    """The whole story: register, recipes, calibrate, build, evaluate, roll out through shadow and canary with a
    recorded approver, replay traffic, inject drift, and watch the alert and the automatic rollback."""
    import json
    from contextlib import nullcontext
    from pathlib import Path

    from rich.console import Console

    from controlplane import demo

    console = Console(stderr=True, soft_wrap=True)  # commands it prints stay on one line
    config = demo.DemoConfig(home=Path(home), drift_requests=drift_requests)
    try:
        if api_url:
            if not (serve_url and api_key):
                typer.echo("error: --api-url needs --serve-url and --api-key (an admin key)", err=True)
                raise typer.Exit(2)
            context = nullcontext(demo.Target(api_url=api_url, serve_url=serve_url, admin_key=api_key))
        elif stack:
            context = nullcontext(demo.stack_target(Path(state_dir) if state_dir else None))
        else:
            context = demo.embedded(config)
        with context as target:
            summary = demo.run_demo(config, target, console)
    except demo.DemoError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    if as_json:
        typer.echo(json.dumps(summary, default=str))
        return
    files = summary["files"]
    console.print(f"\n[bold]Done in {summary['seconds']:.0f} s.[/bold] Where to look:")
    console.print(f"  report:    {files['html']}\n  plots:     {files['drift_png']}, {files['candidates_png']}\n"
                  f"  data:      {files['json']}")
    for line in summary["look"]:
        console.print(f"  dashboard: {line}")
