"""The Celery app that runs jobs: Redis workers in production, in-process when no broker is set.

Start a worker (it serves both queues; a CPU-only host may leave out `gpu`):

    celery -A controlplane.celery_app worker -Q cpu,gpu --concurrency 1 --loglevel INFO

Embedded default (`POPS_BROKER_URL` unset): `task_always_eager` makes `apply_async` run the very
same task function in the calling process, so the API on SQLite needs no Redis and no worker.
"""
from __future__ import annotations

from celery import Celery
from celery.signals import worker_init
from kombu import Exchange, Queue

from controlplane.settings import Settings, get_settings

CPU_QUEUE = "cpu"
GPU_QUEUE = "gpu"
QUEUES = (CPU_QUEUE, GPU_QUEUE)
TASK_MODULES = ["controlplane.jobs.tasks"]

# Redis re-delivers a message whose worker died without acking once `job_visibility_timeout_s`
# (a setting) has passed since delivery. A value shorter than a job makes Redis hand a still-running
# job to a second worker: jobs survive that (completion is exactly once, artifacts are
# content-addressed), but the work is done twice.
# How often a worker sweeps for such abandoned messages (kombu's default sweep is ~100 s).
RESTORE_INTERVAL_S = 10


class PopsCelery(Celery):
    """A Celery app that carries the PrecisionOps settings its tasks run under."""

    def __init__(self, settings: Settings, **kwargs):
        super().__init__("pops", **kwargs)
        self.settings = settings


def create_celery(
    settings: Settings,
    *,
    visibility_timeout_s: int | None = None,
    restore_interval_s: int = RESTORE_INTERVAL_S,
) -> PopsCelery:
    """A Celery app for these settings; with no broker URL every task runs eagerly in-process.
    `visibility_timeout_s` overrides the setting (tests make it seconds)."""
    embedded = settings.broker_url is None
    app = PopsCelery(settings, include=TASK_MODULES, set_as_current=False)
    transport_options = {
        "visibility_timeout": visibility_timeout_s or settings.job_visibility_timeout_s,
        "unacked_restore_interval": restore_interval_s,
        "unacked_restore_throttle": 1,  # sweep on every interval, not every 10th
        "socket_timeout": 30,  # a publish to a vanished Redis fails instead of hanging
        "socket_connect_timeout": 5,
    }
    app.conf.update(
        broker_url=settings.broker_url or "memory://localhost/",
        result_backend=None if embedded else (settings.result_backend or settings.broker_url),
        task_always_eager=embedded,
        task_store_eager_result=False,
        # Tasks record their own failures on the job row; an eager failure must not become a 500.
        task_eager_propagates=False,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        # A message is acked only after the job finished, and a worker that dies mid-job (SIGKILL,
        # OOM) puts it back: the job runs again and finds its artifact by content hash.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,  # a worker holds one job at a time; the rest wait in Redis
        # One direct exchange per queue: a job routed to `gpu` is never also delivered to `cpu`.
        task_queues=tuple(Queue(name, Exchange(name, type="direct"), routing_key=name) for name in QUEUES),
        task_default_queue=CPU_QUEUE,
        task_default_exchange=CPU_QUEUE,
        task_default_routing_key=CPU_QUEUE,
        broker_transport_options=transport_options,
        result_backend_transport_options=transport_options,
        broker_connection_retry_on_startup=True,
        broker_connection_retry=True,
        broker_connection_max_retries=None,  # a worker waits for Redis forever rather than exiting
        broker_channel_error_retry=True,
        result_backend_always_retry=True,
        result_backend_max_retries=20,
        result_expires=7 * 24 * 3600,  # job tasks store no results (the jobs table is their result store)
        worker_hijack_root_logger=False,
    )
    return app


_APPS: dict[tuple, PopsCelery] = {}


def get_celery(settings: Settings | None = None) -> PopsCelery:
    """The process-wide Celery app for these settings (one per database and broker)."""
    settings = settings or get_settings()
    key = (settings.database_url, settings.broker_url, settings.result_backend, str(settings.artifact_root),
           settings.mlflow_tracking_uri, settings.job_visibility_timeout_s)
    if key not in _APPS:
        _APPS[key] = create_celery(settings)
    import controlplane.jobs.tasks  # noqa: F401  (registers the shared tasks on every app)

    return _APPS[key]


def queue_for(*, kind: str, gpu: bool) -> str:
    """The queue a job goes to: builds and evaluations for a GPU accelerator need a GPU host."""
    return GPU_QUEUE if gpu and kind in ("build", "evaluate") else CPU_QUEUE


@worker_init.connect
def _preload(sender=None, **_: object) -> None:
    """Imports torch, transformers and the runtime once in the worker's main process, before any job:
    prefork children inherit them instead of each paying seconds of imports on its first job."""
    import runtime.calibration  # noqa: F401
    import runtime.engines  # noqa: F401
    import runtime.evaluation  # noqa: F401
    from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: F401


# `celery -A controlplane.celery_app worker` finds this app.
app = get_celery()
